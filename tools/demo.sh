#!/usr/bin/env bash
# The built-in demo: synthetic data -> 50-frame preprocessing -> SkeletonCLR pretraining ->
# linear evaluation and k-NN of the self-supervised encoder and of its untrained twin (same
# seed, no pretraining) -> a table against a 1-NN on the raw coordinates.
# Runs on a CPU in minutes and needs no download. Outputs go to data/demo* and work_dir/demo.
# Extra arguments go to the pretraining command (e.g. --seed 1 --work_dir ...).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f data/demo/train_data.npy ]; then   # an existing demo dataset is reused
  python tools/make_demo_data.py --out_folder data/demo --seed 0
fi
# the NTU convention: centre on the spine-shoulder joint, 50 frames, shoulders parallel to x
if [ ! -f data/demo_frame50/val_position.npy ]; then
  python tools/aimclr_preprocess.py --data_path data/demo --out_folder data/demo_frame50 --splits train val --quiet
fi
W=work_dir/demo/skeletonclr
python main.py pretrain_skeletonclr --config config/demo/pretrain_skeletonclr.yaml --resume auto "$@"
# a re-run of the demo replaces the evaluation results of the previous one
python main.py linear_evaluation --config config/demo/linear_eval_skeletonclr.yaml --overwrite true
python main.py knn_retrieval --config config/demo/knn_skeletonclr.yaml --overwrite true
# the untrained twin: the same configs without weights
python main.py linear_evaluation --config config/demo/linear_eval_skeletonclr.yaml --weights "" --work_dir $W/untrained_linear --overwrite true
python main.py knn_retrieval --config config/demo/knn_skeletonclr.yaml --weights "" --work_dir $W/untrained_knn --overwrite true
python tools/demo_table.py --work_dir $W
echo "Demo done: results in $W/{linear/results.json,knn/knn_results.json,demo_summary.json}, confusion matrices in $W/{linear,knn}/"
