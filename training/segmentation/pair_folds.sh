#!/usr/bin/env bash
# The cross-validation of the shipped two-stage pair (glioma_seg + glioma_seg_fine), fold by fold, on this CPU:
# for each fold given, the coarse fold model (glioma_seg's recipe, predicted with all modalities and with each one
# missing), the fine fold model (1.25 mm), then the pair analysed as shipped (one fine pass) into RUNS/pair/oof.
# Resumable: rerun the same command after an interruption; trained folds and stored predictions are kept. About
# 3.5 CPU hours a fold here (1,800 steps each at 3-4 s). Report once the folds are in (README, "Folds across machines"):
#   python -m training.segmentation.cross_validate --run-dir RUNS/pair --report-only --table RUNS/pair/segmentation_cv.md
#
#   training/segmentation/pair_folds.sh RUNS "0 1 2 3 4"
# TRAIN_FLAGS (default "--cpu-bf16 --val-every 600 --threads 2", the published runs') go to both trainings; FINE_FLAGS
# (default none) to the fine one only, and FINE (default fine) and PAIR (default pair) name its run folders under RUNS,
# for a screen of a fine-stage recipe against the shipped one, e.g. a warm start from the coarse fold model:
#   FINE=fine_warm PAIR=pair_warm FINE_FLAGS="--steps 900 --init-weights RUNS/control/fold{fold}/final.safetensors" ...
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: training/segmentation/pair_folds.sh RUNS FOLDS   (e.g. runs/cv \"3 4\")" >&2
  exit 2
fi
runs=$1
folds=$2
py=${PYTHON:-python}
flags=${TRAIN_FLAGS:---cpu-bf16 --val-every 600 --threads 2}
fine_flags=${FINE_FLAGS:-}
fine=$runs/${FINE:-fine}
pair=$runs/${PAIR:-pair}
for k in $folds; do
  echo "[pair_folds] $(date -u +%FT%TZ) fold $k: coarse" >&2
  $py -m training.segmentation.cross_validate --config training/configs/segmentation.yaml --run-dir "$runs/control" \
    --folds "$k" $flags --missing --no-report
  echo "[pair_folds] $(date -u +%FT%TZ) fold $k: fine" >&2
  $py -m training.segmentation.cross_validate --config training/configs/segmentation_fine.yaml --run-dir "$fine" \
    --folds "$k" $flags $fine_flags --no-report
  echo "[pair_folds] $(date -u +%FT%TZ) fold $k: the pair" >&2
  $py -m training.segmentation.screen_fine_stage --coarse "$runs/control" --fine "$fine" --out "$pair" \
    --fine-passes 1
done
echo "[pair_folds] $(date -u +%FT%TZ) done: folds $folds" >&2
