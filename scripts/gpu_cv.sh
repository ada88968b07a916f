#!/usr/bin/env bash
# On the GPU machine: the README's main job (a CV of the 285-case synthetic cohort) for one config and a
# subset of its folds, so that a CV fits the device's per-command time limit; fold directories made by
# separate calls are merged by `dsmil audit RUN_A RUN_B --out MERGED` (it refuses folds of different
# configs or splits). Usage: scripts/gpu_cv.sh CONFIG FOLDS [more `dsmil cv` arguments]
# COHORT_SEED=S (default 1) picks the cohort `dsmil cohort --seed S`. Prints the timings and the digest of
# scripts/cv_digest.py; writes the run directory, checkpoints left out, as $OUT/<config>_seed<S>_folds_<FOLDS>.tar.gz.
# Do not stop it with `timeout`: the digest and the archive come at the end. Keep a call's runs within its limit
# instead: round 1 of tuning (notes/RESULTS-CV.md) ran 30 epochs of 4 folds side by side in 137-166 s, 4 threads
# each; a 5-fold CV with --workers 3 and 16 threads per fold did not finish in 245 s.
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
config=$1 folds=$2
shift 2
source scripts/gpu_cohort.sh
name=${config}_seed${cohort_seed}_folds_${folds//,/-}
# Each process of the run gets its share of the cores: folds side by side (--workers N) that each spin up all
# of them oversubscribe the host, and the GPU waits for it.
processes=1
args=("$@")
for ((i = 0; i < ${#args[@]}; ++i)); do [ "${args[i]}" = --workers ] && processes=${args[i + 1]}; done
threads=$(( $(nproc) / processes )); (( threads > 0 )) || threads=1
start=$(date +%s)
status=0
"$carry/dsmil" cv --config "$config" --data "$cohort" --set data.cache=cohort/cache --set "run.threads=$threads" \
  --folds "$folds" --out "runs-gpu/seed$cohort_seed" "$@" > "runs-gpu-$name.log" 2>&1 || status=$?
echo "cv $config on the seed-$cohort_seed cohort, folds $folds: exit $status, $(( $(date +%s) - start )) s wall (preprocessing included)"
grep -E "resident|cases \(|training done|consistency|Error|error" "runs-gpu-$name.log" || true
run_dir=$(ls -td runs-gpu/seed"$cohort_seed"/"$config"_* | head -1)
[ -f "$run_dir/cv_summary.json" ] && python3 scripts/cv_digest.py "$run_dir"
if [ -n "${OUT:-}" ]; then
  cp "runs-gpu-$name.log" "$run_dir/"
  tar czf "$OUT/$name.tar.gz" --exclude='*.ckpt' -C "$(dirname "$run_dir")" "$(basename "$run_dir")"
fi
exit $status
