#!/usr/bin/env bash
# The built-in demo: synthetic data -> 50-frame preprocessing -> SkeletonCLR pretraining ->
# linear evaluation -> k-NN.
# Runs on a CPU in minutes and needs no download. Outputs go to data/demo* and work_dir/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f data/demo/train_data.npy ]; then   # an existing demo dataset is reused
  python tools/make_demo_data.py --out_folder data/demo --seed 0
fi
# the NTU convention: centre on the spine-shoulder joint, 50 frames, shoulders parallel to x
if [ ! -f data/demo_frame50/val_position.npy ]; then
  python tools/aimclr_preprocess.py --data_path data/demo --out_folder data/demo_frame50 --splits train val --quiet
fi
python main.py pretrain_skeletonclr --config config/demo/pretrain_skeletonclr.yaml --resume auto "$@"
# a re-run of the demo replaces the evaluation results of the previous one
python main.py linear_evaluation --config config/demo/linear_eval_skeletonclr.yaml --overwrite true
python main.py knn_retrieval --config config/demo/knn_skeletonclr.yaml --overwrite true
echo "Demo done: results in work_dir/demo/skeletonclr/{linear/results.json,knn/knn_results.json}"
