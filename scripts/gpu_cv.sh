#!/usr/bin/env bash
# On the GPU machine: the README's main job (a CV of the 285-case synthetic cohort) for one config and a
# subset of its folds, so that a CV fits the device's per-command time limit; fold directories made by
# separate calls are merged by `dsmil audit RUN_A RUN_B --out MERGED` (it refuses folds of different
# configs or splits). Usage: scripts/gpu_cv.sh CONFIG FOLDS [more `dsmil cv` arguments]
# Writes the run directory, checkpoints left out, to $OUT/<config>_folds_<FOLDS>/ and prints timings.
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
config=$1 folds=$2
shift 2
source scripts/gpu_cohort.sh
start=$(date +%s)
status=0
"$carry/dsmil" cv --config "$config" --data "$cohort" --set data.cache=cohort/cache --set "run.threads=$(nproc)" \
  --folds "$folds" --out runs-gpu "$@" > "runs-gpu-$config.log" 2>&1 || status=$?
echo "cv $config folds $folds: exit $status, $(( $(date +%s) - start )) s wall (preprocessing included)"
grep -E "done:|resident|cases \(|training done|consistency|Error|error" "runs-gpu-$config.log" || true
run_dir=$(ls -td runs-gpu/"$config"_* | head -1)
dest=${OUT:-$repo_root/gpu-cv-out}/${config}_folds_${folds//,/-}
mkdir -p "$dest"
(cd "$run_dir" && find . -type f ! -name '*.ckpt' -print0 | xargs -0 cp --parents -t "$dest")
cp "runs-gpu-$config.log" "$dest/"
exit $status
