#!/usr/bin/env bash
# On the GPU machine: the final judgement of a recipe, a whole CV of CONFIG on each of several cohorts written with
# `dsmil cohort --seed S` (seeds not looked at while tuning), side by side on one GPU, each through scripts/gpu_cv.sh
# (digest, archive under $OUT). Prints each CV's output when all have ended, and the wall time.
# Usage: scripts/gpu_judge.sh CONFIG SEEDS [more `dsmil cv` arguments], e.g.
#   scripts/gpu_judge.sh recommended-v2 6,7
# The cohorts are written and preprocessed first, one after the other with every core (inside `dsmil cv` each fold
# process would preprocess with its share of one or two cores: 285 cases took minutes that way); then every CV runs
# its five folds as five processes (--workers 5; WORKERS=10 for a CV of `--repeats 2`) with an equal share of the
# cores. Two CVs of recommended-v2 at 40
# epochs took 284 s of training side by side on an H200.
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
config=$1 seeds=$2
shift 2
seed_list=(${seeds//,/ })
workers=${WORKERS:-5}
threads=$(( $(nproc) / (workers * ${#seed_list[@]}) )); (( threads > 0 )) || threads=1
start=$(date +%s)
for seed in "${seed_list[@]}"; do
  COHORT_SEED=$seed source scripts/gpu_cohort.sh
  preprocess_cohort "configs/$config.toml"
done
echo "== cohorts written and preprocessed: $(( $(date +%s) - start )) s"
pids=()
for seed in "${seed_list[@]}"; do
  COHORT_SEED=$seed bash scripts/gpu_cv.sh "$config" 0,1,2,3,4 --workers "$workers" --set "run.threads=$threads" "$@" \
    > "judge_seed$seed.txt" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "== $config on cohort seeds $seeds: $(( $(date +%s) - start )) s wall for all"
for seed in "${seed_list[@]}"; do
  echo "== seed $seed"
  grep -v "^cohort: [0-9]\|^preprocess: [0-9]" "judge_seed$seed.txt"
done
exit $status
