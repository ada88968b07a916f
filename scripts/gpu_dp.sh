#!/usr/bin/env bash
# On a machine with 2 or more GPUs: data-parallel training (`cv --nproc`) against one process, and folds
# spread over the GPUs (`cv --gpus`). Fold 0 of the default cohort (scripts/gpu_cohort.sh).
#   equivalence: 1 epoch in strict fp32 with deterministic algorithms as 1 process with the whole batch (twice:
#                the control), 2 ranks with synchronised batch norm (the same mathematics), 2 ranks with per-rank
#                statistics; compared by compare_dp_runs.py
#   speed:       EPOCHS epochs of the shipped config as 1 process and as 2 ranks (train bags/s per epoch),
#                at its batch of 2 bags and at BIG_BATCH bags
#   folds:       the whole 5-fold CV of the shipped config with --gpus over every GPU (wall time)
#   baseline:    the same CV in one process on one GPU, for the ratio
# Usage: scripts/gpu_dp.sh [equivalence] [speed] [folds] [baseline]   (none: all). Logs and a summary in $OUT.
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
out=${OUT:-$repo_root/gpu-dp-out}
mkdir -p "$out"
source scripts/gpu_env.sh
source scripts/gpu_cohort.sh
steps=${*:-equivalence speed folds baseline}
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
echo "GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)  (ids $gpus)"
common=(--config recommended-v2 --data "$cohort" --set data.cache=cohort/cache --set "run.threads=$(nproc)")

# Runs `dsmil cv` with a label; its log in $out/<label>.log; prints the wall time.
run_cv() {
  local label=$1
  shift
  local start
  start=$(date +%s%N)
  "$carry/dsmil" cv "${common[@]}" --out "runs-dp/$label" "$@" > "$out/$label.log" 2>&1
  local status=$?
  local tenths=$(( ($(date +%s%N) - start) / 100000000 ))
  printf '%-22s exit %d, %d.%d s wall\n' "$label" "$status" $((tenths / 10)) $((tenths % 10))
  grep -E "Error|error|FAILED" "$out/$label.log" | head -5
  return $status
}

rm -rf runs-dp
if [[ " $steps " == *" equivalence "* ]]; then
  echo "== equivalence: fold 0, 1 epoch, strict fp32"
  exact=(--folds 0 --no-audit --strict-fp32 --deterministic --set train.epochs=1 --set train.min_epochs=1
         --set train.warmup_epochs=1)
  run_cv one_process "${exact[@]}"
  run_cv one_process_again "${exact[@]}"
  run_cv two_ranks_sync_bn --nproc 2 "${exact[@]}" --set train.sync_batchnorm=true
  run_cv two_ranks_local_bn --nproc 2 "${exact[@]}"
  python3 scripts/compare_dp_runs.py runs-dp/one_process runs-dp/one_process_again runs-dp/two_ranks_sync_bn \
    runs-dp/two_ranks_local_bn | tee "$out/equivalence.txt"
  # Learning rate 0: the weights stay at their start, so every step compares the forward pass and the
  # gradient (its norm) at the same weights, free of the divergence of trajectories that training adds.
  run_cv frozen_one_process "${exact[@]}" --set train.lr=0
  run_cv frozen_two_ranks_sync_bn --nproc 2 "${exact[@]}" --set train.lr=0 --set train.sync_batchnorm=true
  run_cv frozen_two_ranks_local_bn --nproc 2 "${exact[@]}" --set train.lr=0
  python3 scripts/compare_dp_runs.py runs-dp/frozen_one_process runs-dp/frozen_two_ranks_sync_bn \
    runs-dp/frozen_two_ranks_local_bn | tee -a "$out/equivalence.txt"
fi
if [[ " $steps " == *" speed "* ]]; then
  echo "== speed: fold 0, ${EPOCHS:=3} epochs, the shipped config (fp32 with TF32)"
  speed=(--folds 0 --no-audit --set "train.epochs=$EPOCHS" --set "train.min_epochs=$EPOCHS")
  run_cv speed_one_process "${speed[@]}"
  run_cv speed_two_ranks --nproc 2 "${speed[@]}"
  big=(--set "train.bags_per_step=${BIG_BATCH:=8}")
  run_cv speed_one_process_batch_$BIG_BATCH "${speed[@]}" "${big[@]}"
  run_cv speed_two_ranks_batch_$BIG_BATCH --nproc 2 "${speed[@]}" "${big[@]}"
  python3 scripts/compare_dp_runs.py --speed runs-dp/speed_one_process runs-dp/speed_two_ranks | tee "$out/speed.txt"
  python3 scripts/compare_dp_runs.py --speed runs-dp/speed_one_process_batch_$BIG_BATCH \
    runs-dp/speed_two_ranks_batch_$BIG_BATCH | tee -a "$out/speed.txt"
fi
if [[ " $steps " == *" folds "* ]]; then
  echo "== folds: the whole CV with --gpus $gpus"
  run_cv folds_over_gpus --gpus "$gpus"
  grep -E "fold [0-9]: done|training done|consistency" "$out/folds_over_gpus.log"
  tail -1 "$out/folds_over_gpus.log"
fi
if [[ " $steps " == *" baseline "* ]]; then
  echo "== baseline: the whole CV in one process on one GPU"
  run_cv cv_one_gpu
  grep -E "training done|consistency" "$out/cv_one_gpu.log"
fi
