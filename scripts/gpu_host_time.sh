#!/usr/bin/env bash
# On the GPU machine: where a training step's host time goes (notes/PERF.md: at the CV's shape the GPU waits for the
# host). `dsmil bench` at recommended-v2's CV shape and at the DESIGN section 11 shape, each under
# libhost_time.so (tools/host_time: every CUDA runtime, cuDNN and cuBLAS call's host time per step), then, where
# build-pg-carry/dsmil is there, the same benchmark with that binary built with -pg: its gmon.out (our own code's
# host time: `gprof build-pg/dsmil gmon.out` on the development machine) goes to $OUT.
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
cv_shape=(--config recommended-v2 --bags 2 --instances 16 --slab 3 --size 128 --width 64 --depth 18)
design_shape=(--bags 2 --instances 32 --slab 4 --size 128 --width 64 --depth 18 --set model.topk=3)
for shape_name in cv design; do
  declare -n shape=${shape_name}_shape
  echo "== $shape_name shape: dsmil bench ${shape[*]} --set run.precision=bf16 under libhost_time.so"
  DSMIL_HOST_TIME_STEPS=$(( steps + warmup )) LD_PRELOAD=$carry/libhost_time.so "$carry/dsmil" bench "${shape[@]}" \
    --set run.precision=bf16 --steps "$steps" --warmup "$warmup" 2> "host_time_$shape_name.txt" |
    grep "^train step\|^host:"
  grep "^host_time:" "host_time_$shape_name.txt" | head -24
  [ -n "${OUT:-}" ] && cp "host_time_$shape_name.txt" "$OUT/"
done
if [ -x build-pg-carry/dsmil ] && [ -n "${OUT:-}" ]; then
  echo "== cv shape, the -pg binary (gmon.out to \$OUT)"
  (cd "$OUT" && "$repo_root/build-pg-carry/dsmil" bench "${cv_shape[@]}" --set run.precision=bf16 --steps "$steps" \
     --warmup "$warmup" | grep "^train step\|^host:")
fi
exit 0
