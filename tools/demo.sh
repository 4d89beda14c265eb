#!/usr/bin/env bash
# The built-in demo: synthetic data -> 50-frame preprocessing -> SkeletonCLR pretraining ->
# linear evaluation and k-NN of the self-supervised encoder and of its untrained twin (same
# architecture and seed, no pretraining, batch-norm statistics of the training clips) -> a table
# against a 1-NN on the raw coordinates.
# Runs on a CPU in minutes and needs no download. Outputs go to data/demo* and work_dir/demo.
#   bash tools/demo.sh                         # seed 0: work_dir/demo/skeletonclr
#   DEMO_SEEDS="0 1 2" bash tools/demo.sh      # one run per seed (seed S > 0: .../skeletonclr_seedS),
#                                              # then the figures as ranges over the seeds
# Extra arguments go to the pretraining command (e.g. --num_epoch 4).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f data/demo/train_data.npy ]; then   # an existing demo dataset is reused
  python tools/make_demo_data.py --out_folder data/demo --seed 0
fi
# the NTU convention: centre on the spine-shoulder joint, 50 frames, shoulders parallel to x
if [ ! -f data/demo_frame50/val_position.npy ]; then
  python tools/aimclr_preprocess.py --data_path data/demo --out_folder data/demo_frame50 --splits train val --quiet
fi
LINEAR=config/demo/linear_eval_skeletonclr_motion.yaml
KNN=config/demo/knn_skeletonclr_motion.yaml
RUNS=()
for S in ${DEMO_SEEDS:-0}; do
  W=work_dir/demo/skeletonclr
  if [ "$S" != 0 ]; then W=work_dir/demo/skeletonclr_seed$S; fi
  RUNS+=("$W")
  python main.py pretrain_skeletonclr --config config/demo/pretrain_skeletonclr_motion.yaml --work_dir $W/pretrain \
    --seed "$S" --resume auto "$@"
  CKPT=$(ls $W/pretrain/epoch*_model.pt | sort -V | tail -n 1)   # the last epoch's checkpoint
  # a re-run of the demo replaces the evaluation results of the previous one
  python main.py linear_evaluation --config $LINEAR --weights "$CKPT" --work_dir $W/linear --seed "$S" --overwrite true
  python main.py knn_retrieval --config $KNN --weights "$CKPT" --work_dir $W/knn --seed "$S" --overwrite true
  # the untrained twin: the same configs without weights
  python main.py linear_evaluation --config $LINEAR --weights "" --recalibrate_bn true \
    --work_dir $W/untrained_linear --seed "$S" --overwrite true
  python main.py knn_retrieval --config $KNN --weights "" --recalibrate_bn true \
    --work_dir $W/untrained_knn --seed "$S" --overwrite true
  python tools/demo_table.py --work_dir $W
done
if [ ${#RUNS[@]} -gt 1 ]; then
  python tools/demo_table.py --work_dir "${RUNS[@]}" --out work_dir/demo/seeds_summary.json
fi
echo "Demo done: results in ${RUNS[0]}/{linear/results.json,knn/knn_results.json,demo_summary.json}, confusion matrices in ${RUNS[0]}/{linear,knn}/"
