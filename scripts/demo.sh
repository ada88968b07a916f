#!/usr/bin/env bash
# The main job: builds dsmil, writes the synthetic BraTS-like cohort and cross-validates on it, then
# prints where AUDIT.md is. On a GPU machine: the full 285-case cohort at the default config; on a
# CPU-only machine: 600 small cases with a plainer tumour signal (--difficulty 0.45) and configs/tiny, a 3-fold
# CV.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
echo "building dsmil (log: build/build.log)"
# Only the program the demo runs; its compile lines are the build's progress, the whole log stays in the file.
if ! bash scripts/build.sh dsmil 2>&1 | tee build/build.log | grep --line-buffered -E '^(\[ *[0-9]+%\]|installing: )'; then
  tail -30 build/build.log
  exit 1
fi
if nvidia-smi > /dev/null 2>&1; then
  cohort=cohort/brats_like_285; config=recommended-v2; cohort_args=()
else
  cohort=cohort/demo_cpu_600; config=tiny; cohort_args=(--cases 600 --dims 64,64,40 --difficulty 0.45 --threads "$(nproc)")
fi
[ -f "$cohort/truth.csv" ] || ./build/dsmil cohort --out "$cohort" "${cohort_args[@]}" --seed 1
./build/dsmil cv --config "$config" --data "$cohort" --set data.cache=cohort/cache "$@"
