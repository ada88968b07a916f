#!/usr/bin/env bash
# On the GPU machine: `dsmil export` against the PyTorch twin on CUDA. dsmil trains fold 0 of the tiny config on a
# small cohort on the GPU in strict fp32 (bf16 or TF32 would move p(HGG) by more than the tolerance), exports the
# fold's chosen model as safetensors, and predicts every case of the cohort on CUDA (`dsmil predict --run`, whose
# p_fold_0 is that model); tools/torch_twin/predict_export.py computes p(HGG) of the same cases with the twin on
# CUDA from the exported file alone and compares. Exit status 0 when they agree within 1e-4, 1 when not.
# Usage: scripts/gpu_export_check.sh   (CASES=N, default 40, sizes the cohort; EPOCHS=E, default 3)
# Writes $OUT/export_check.tar.gz: the exported file, both tables and the logs.
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
set -e  # from here on; gpu_env.sh tries look-ups that may fail
python=/opt/torch/.venv/bin/python3
[ -x "$python" ] || python=python3
"$python" -c 'import safetensors' 2>/dev/null ||
  echo "note: $python has no safetensors package: predict_export.py reads the file with its own reader"
CASES=${CASES:-40}
epochs=${EPOCHS:-3}
source scripts/gpu_cohort.sh
work=export_check
rm -rf "$work" && mkdir -p "$work"
"$carry/dsmil" cv --config tiny --data "$cohort" --folds 0 --out "$work/runs" --device cuda --strict-fp32 \
  --set run.precision=fp32 --set data.cache=cohort/cache --set "train.epochs=$epochs" \
  --set "train.min_epochs=$epochs" --no-audit > "$work/cv.log" 2>&1 || { tail -5 "$work/cv.log"; exit 1; }
run_dir=$(ls -d "$work"/runs/*/ | head -1)
run_dir=${run_dir%/}
"$carry/dsmil" export "$run_dir/fold_0" --format safetensors --out "$work/model.safetensors"
preprocess_cohort "$run_dir/config.toml" --index "$work/index.csv"
"$carry/dsmil" predict --run "$run_dir" --data "$cohort" --out "$work/predictions.csv" --device cuda > "$work/predict.log"
status=0
"$python" tools/torch_twin/predict_export.py "$work/model.safetensors" --index "$work/index.csv" --device cuda \
  --compare "$work/predictions.csv" --column p_fold_0 | tee "$work/twin.txt" || status=$?
[ -n "${OUT:-}" ] && tar czf "$OUT/export_check.tar.gz" --exclude='*.ckpt' "$work"
exit $status
