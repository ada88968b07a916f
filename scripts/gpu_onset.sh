#!/usr/bin/env bash
# On the GPU machine: dsmil and the PyTorch training twin side by side on the same folds and splits, in bf16 and
# in fp32, for several cv seeds, over the first EPOCHS epochs: where the two leave chance (onset), and how the
# first epoch differs (mean training loss, first step's gradient norm). Tuning data only: the seed-1 cohort
# (COHORT_SEED), inner validation and training curves (scripts/tune_summary.py reads metrics.jsonl alone).
# Usage: scripts/gpu_onset.sh [CONFIG] [EPOCHS] [SEEDS] [FOLDS]   (defaults: recommended-v2 15 2026,2027 0,1)
# Each (precision, seed) is one dsmil run of FOLDS (a fold process each) and one twin process per fold over that
# run's config.toml and splits.json. Writes runs-onset/ and $OUT/onset_runs.tar.gz (metrics, fold.json, logs).
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
config=${1:-recommended-v2} epochs=${2:-15} seeds=${3:-2026,2027} folds=${4:-0,1}
python=${PYTHON:-/opt/torch/.venv/bin/python3}
[ -x "$python" ] || python=python3
device=cuda
[ -n "$cudnn_found" ] || device=cpu  # a dry run off the GPU machine
precisions=(bf16 fp32)
[ "$device" = cpu ] && precisions=(fp32)
source scripts/gpu_cohort.sh
preprocess_cohort "configs/$config.toml" --index twin_index.csv  # the twin reads the cache at the config's grid
seed_list=(${seeds//,/ }) fold_list=(${folds//,/ })
processes=$(( ${#precisions[@]} * ${#seed_list[@]} * ${#fold_list[@]} * 2 ))
threads=$(( $(nproc) / processes )); (( threads > 0 )) || threads=1
rm -rf runs-onset && mkdir -p runs-onset
start=$(date +%s)
pids=()
for precision in "${precisions[@]}"; do
  for seed in "${seed_list[@]}"; do
    name=${precision}_$seed
    "$carry/dsmil" cv --config "$config" --data "$cohort" --set data.cache=cohort/cache --folds "$folds" \
      --workers "${#fold_list[@]}" --device "$device" --no-audit --out "runs-onset/dsmil_$name" \
      --set "run.threads=$threads" --set "run.precision=$precision" --set "cv.seed=$seed" \
      --set "train.epochs=$epochs" --set "train.min_epochs=$epochs" > "runs-onset/dsmil_$name.log" 2>&1 &
    pids+=($!)
  done
done
# The twin starts on each dsmil run as soon as its splits.json is written.
for precision in "${precisions[@]}"; do
  for seed in "${seed_list[@]}"; do
    name=${precision}_$seed
    until ls runs-onset/dsmil_"$name"/*/splits.json > /dev/null 2>&1; do sleep 1; done
    run_dir=$(dirname "$(ls runs-onset/dsmil_"$name"/*/splits.json | head -1)")
    for k in "${fold_list[@]}"; do
      OMP_NUM_THREADS=$threads "$python" tools/torch_twin/train.py --run "$run_dir" --index twin_index.csv \
        --folds "$k" --out "runs-onset/twin_${name}_f$k/twin" --device "$device" > "runs-onset/twin_${name}_f$k.log" 2>&1 &
      pids+=($!)
    done
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "dsmil and twin, ${#precisions[@]} precisions x seeds $seeds x folds $folds, $epochs epochs: $(( $(date +%s) - start )) s"
python3 scripts/tune_summary.py runs-onset
if [ -n "${OUT:-}" ]; then
  find runs-onset \( -name metrics.jsonl -o -name fold.json -o -name '*.log' -o -name config.toml \) -print0 |
    tar czf "$OUT/onset_runs.tar.gz" --null -T -
fi
exit $status
