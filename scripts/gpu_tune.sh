#!/usr/bin/env bash
# On the GPU machine: training runs of config variants on folds of one cohort, side by side on the GPU, for
# tuning. Nothing here reads a test prediction: the summary (scripts/tune_summary.py) reads metrics.jsonl
# (training and inner-validation curves) only.
# Usage: scripts/gpu_tune.sh VARIANTS_FILE [PARALLEL] [DEADLINE_S]
#   VARIANTS_FILE: one run a line, `name folds config [dsmil cv arguments]`, e.g.
#     lr1e-4 0,1 recommended-v2 --set train.lr=1e-4
#   Runs start in file order, PARALLEL at a time (default 4); those still running at DEADLINE_S seconds
#   (default 540) are stopped, so that the summary is printed inside one device call.
# Environment: COHORT_SEED (default 1), TUNE_PROCESS_MIB (device memory a run needs, default 8192: PARALLEL is lowered
# to what the free memory holds), TUNE_EPOCHS (default: the config's) sets train.epochs and
# train.min_epochs alike (whole curves, no early stopping), TUNE_PROBE_INSTANCES (e.g. 16,32,64: after the runs,
# each fold's last.ckpt, best.ckpt and best_ema.ckpt predict its inner validation split from bags of that many fixed
# slabs; scripts/eval_probe.py compares them, paired by weights). Writes runs-tune/ and, under $OUT,
# tune_runs.tar.gz (every metrics.jsonl, fold.json, log and probe prediction).
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
variants=$1 parallel=${2:-4} deadline=${3:-540}
start=$(date +%s)
# Each run holds the cohort on the GPU (5 GiB for 285 cases at 128^3) beside its CUDA context, its training step and
# the first step's algorithm search (up to 1 GiB): about 8 GiB. 24 runs at once did not fit an H200 and 16 did (round 4
# of tuning), so PARALLEL is capped by the free device memory.
if command -v nvidia-smi > /dev/null; then
  free_mib=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits | head -1)
  fitting=$(( free_mib / ${TUNE_PROCESS_MIB:-8192} ))
  if (( fitting >= 1 && fitting < parallel )); then
    echo "gpu_tune: $parallel runs at once need more than the ${free_mib} MiB free; running $fitting at once"
    parallel=$fitting
  fi
fi
source scripts/gpu_cohort.sh
"$carry/dsmil" preprocess --data "$cohort" --cache cohort/cache --threads "$(nproc)" | tail -1
threads=$(( $(nproc) / parallel )); (( threads > 0 )) || threads=1
epochs=()
[ -n "${TUNE_EPOCHS:-}" ] && epochs=(--set "train.epochs=$TUNE_EPOCHS" --set "train.min_epochs=$TUNE_EPOCHS")
mkdir -p runs-tune

# Returns when fewer than PARALLEL background jobs run.
wait_for_slot() {
  while (( $(jobs -rp | wc -l) >= parallel )); do wait -n; done
}

run_one() {
  local name=$1 fold=$2 config=$3
  shift 3
  local t0=$(date +%s)
  timeout $(( deadline - (t0 - start) )) "$carry/dsmil" cv --config "$config" --data "$cohort" --set data.cache=cohort/cache \
    --set "run.threads=$threads" --folds "$fold" --no-audit --out "runs-tune/${name}_f$fold" "${epochs[@]}" "$@" \
    > "runs-tune/${name}_f$fold.log" 2>&1
  echo "run $name fold $fold: exit $?, $(( $(date +%s) - t0 )) s"
}

while read -r name folds config args; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  for fold in ${folds//,/ }; do
    wait_for_slot
    (( $(date +%s) - start < deadline - 30 )) || { echo "run $name fold $fold: not started (deadline)"; continue; }
    # shellcheck disable=SC2086  # the variant's arguments are words
    run_one "$name" "$fold" "$config" $args &
  done
done < "$variants"
wait
echo "all runs done in $(( $(date +%s) - start )) s"
python3 scripts/tune_summary.py runs-tune

probe_one() {
  local fold_dir=$1 checkpoint=$2 n=$3
  "$carry/dsmil" eval --checkpoint "$fold_dir/$checkpoint.ckpt" --data "$fold_dir/probe/inner_val.csv" \
    --cache cohort/cache --instances "$n" --out "$fold_dir/probe/${checkpoint}_$n" > "$fold_dir/probe/${checkpoint}_$n.log" 2>&1 ||
    echo "probe $fold_dir $checkpoint n $n: failed (see its log)"
}

if [ -n "${TUNE_PROBE_INSTANCES:-}" ]; then
  probe_start=$(date +%s)
  for fold_dir in runs-tune/*/*/fold_*/; do
    fold_dir=${fold_dir%/}
    mkdir -p "$fold_dir/probe"
    python3 scripts/eval_probe.py manifest "$fold_dir" "$cohort" "$fold_dir/probe/inner_val.csv"
    for checkpoint in last best best_ema; do
      [ -f "$fold_dir/$checkpoint.ckpt" ] || continue
      for n in ${TUNE_PROBE_INSTANCES//,/ }; do
        wait_for_slot
        probe_one "$fold_dir" "$checkpoint" "$n" &
      done
    done
  done
  wait
  echo "probe done in $(( $(date +%s) - probe_start )) s"
  python3 scripts/eval_probe.py summary runs-tune
fi
if [ -n "${OUT:-}" ]; then
  find runs-tune \( -name metrics.jsonl -o -name fold.json -o -name '*.log' -o -name config.toml -o \
    -path '*/probe/*' -name '*.csv' \) -print0 |
    tar czf "$OUT/tune_runs.tar.gz" --null -T -
fi
