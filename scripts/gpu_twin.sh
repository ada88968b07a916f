#!/usr/bin/env bash
# On the GPU machine: the PyTorch training twin (tools/torch_twin/train.py) on the folds of a dsmil run, all folds
# side by side, over dsmil's cache of the same cohort; then `dsmil audit` of the twin's folds as one run.
# Usage: scripts/gpu_twin.sh RUN_DIR FOLDS   (RUN_DIR holds the dsmil run's config.toml and splits.json)
# COHORT_SEED=S (default 1) picks the cohort the run was made on. Prints each fold's last lines and the digest of
# scripts/cv_digest.py; writes $OUT/twin.tar.gz with the twin's fold directories (metrics.jsonl, fold.json,
# predictions.csv: what tools/torch_twin/plot_curves.py reads) and logs.
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
run_dir=$1 folds=$2
python=/opt/torch/.venv/bin/python3
[ -x "$python" ] || python=python3
source scripts/gpu_cohort.sh
preprocess_cohort "$run_dir/config.toml" --index twin_index.csv
fold_list=(${folds//,/ })
threads=$(( $(nproc) / ${#fold_list[@]} )); (( threads > 0 )) || threads=1
rm -rf runs-twin && mkdir -p runs-twin
start=$(date +%s)
for k in "${fold_list[@]}"; do
  OMP_NUM_THREADS=$threads "$python" tools/torch_twin/train.py --run "$run_dir" --index twin_index.csv --folds "$k" \
    --out "runs-twin/twin_f$k" --device cuda > "runs-twin/twin_f$k.log" 2>&1 &
done
wait
echo "twin, folds $folds side by side: $(( $(date +%s) - start )) s"
for k in "${fold_list[@]}"; do tail -2 "runs-twin/twin_f$k.log"; done
"$carry/dsmil" audit runs-twin/twin_f*/ --out runs-twin/merged --no-plots | tail -2
python3 scripts/cv_digest.py runs-twin/merged
[ -n "${OUT:-}" ] && tar czf "$OUT/twin.tar.gz" --exclude='*.ckpt' runs-twin
