#!/usr/bin/env bash
# On the GPU machine: where a training step's host time goes (notes/PERF.md: at the CV's shape the GPU waits for the
# host). `dsmil bench` at recommended-v2's CV shape and at the DESIGN section 11 shape, each under
# libhost_time.so (tools/host_time: every CUDA runtime, cuDNN graph-API and cuBLASLt call's host time per step), one
# fold of a CV under it (the seed-1 cohort, 3 epochs), then, where
# build-pg-carry/dsmil is there, the benchmark and the fold with that binary built with -pg: their gmon.out (our own
# code's host time: `gprof build-pg/dsmil gmon.out` on the development machine) go to $OUT/pg_bench and $OUT/pg_fold.
# Build the -pg binary on the development machine with
#   cmake -S . -B build-pg -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS=-pg -DCMAKE_EXE_LINKER_FLAGS=-pg &&
#   cmake --build build-pg --target dsmil && mkdir -p build-pg-carry && cp build-pg/dsmil build-pg-carry/
# Usage: scripts/gpu_host_time.sh [STEPS]   (default 200; carry build-cuda-carry, and build-pg-carry if built)
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
steps=${1:-200} warmup=5
source scripts/gpu_cohort.sh
read -ra cv_shape <<< "--config recommended-v2 $(bench_shape configs/recommended-v2.toml)"
design_shape=(--bags 2 --instances 32 --slab 4 --size 128 --width 64 --depth 18 --set model.topk=3)
for shape_name in cv design; do
  declare -n shape=${shape_name}_shape
  echo "== $shape_name shape: dsmil bench ${shape[*]} --set run.precision=bf16 under libhost_time.so"
  DSMIL_HOST_TIME_STEPS=$(( steps + warmup )) LD_PRELOAD=$carry/libhost_time.so "$carry/dsmil" bench "${shape[@]}" \
    --set run.precision=bf16 --steps "$steps" --warmup "$warmup" 2> "host_time_$shape_name.txt" |
    grep "^train step\|^host\|^device time:"
  grep "^host_time:" "host_time_$shape_name.txt" | head -24
  [ -n "${OUT:-}" ] && cp "host_time_$shape_name.txt" "$OUT/"
done
# The same calls in a CV fold (3 epochs alone on the GPU): a call's mean host time here against the benchmark's says
# which calls the fold's process makes slower (its step is queued in 11.6-14.3 ms against the benchmark's 7-10).
preprocess_cohort configs/recommended-v2.toml
echo "== a CV fold of recommended-v2 under libhost_time.so (3 epochs; evaluation's calls included)"
rm -rf runs-host-time
LD_PRELOAD=$carry/libhost_time.so "$carry/dsmil" cv --config recommended-v2 --data "$cohort" --set data.cache=cohort/cache \
  --set run.precision=bf16 --set train.epochs=3 --set train.min_epochs=3 --folds 0 --no-audit --out runs-host-time \
  > host_time_cv_fold.txt 2>&1
grep "^host_time:" host_time_cv_fold.txt | head -24
python3 - runs-host-time/*/fold_0/metrics.jsonl <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"fold epoch {r['epoch']}: {r['throughput_bags_per_s']:.1f} bags/s; host: queuing steps {r['step_queue_s']:.2f} s, "
          f"reading them back {r['step_readback_s']:.2f} s")
PY
[ -n "${OUT:-}" ] && cp host_time_cv_fold.txt "$OUT/"
if [ -x build-pg-carry/dsmil ] && [ -n "${OUT:-}" ]; then
  echo "== cv shape, the -pg binary (gmon.out to \$OUT/pg_bench)"
  mkdir -p "$OUT/pg_bench" "$OUT/pg_fold"
  (cd "$OUT/pg_bench" && "$repo_root/build-pg-carry/dsmil" bench "${cv_shape[@]}" --set run.precision=bf16 \
     --steps "$steps" --warmup "$warmup" | grep "^train step\|^host\|^device time:")
  echo "== a CV fold with the -pg binary (gmon.out to \$OUT/pg_fold)"
  rm -rf runs-pg
  (cd "$OUT/pg_fold" && "$repo_root/build-pg-carry/dsmil" cv --config recommended-v2 --data "$repo_root/$cohort" \
     --set data.cache="$repo_root/cohort/cache" --set run.precision=bf16 --set train.epochs=3 --set train.min_epochs=3 \
     --folds 0 --no-audit --out "$repo_root/runs-pg" > /dev/null 2>&1; echo "exit $?")
fi
exit 0
