#!/usr/bin/env bash
# On the GPU machine: Nsight Compute's view of one kernel of `dsmil bench --kernel` (one launch, clocks left alone):
# speed of light, occupancy, warp stalls and the compute pipes. The full report of each dtype goes under $OUT
# (ncu_KERNEL_DTYPE.txt); stdout gets the lines that say what bounds the kernel.
# Usage: scripts/gpu_ncu.sh BENCH_KERNEL CUDA_KERNEL_REGEX [DTYPES], e.g.
#   scripts/gpu_ncu.sh batchnorm_statistics partial_sums bf16,f32
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
bench_kernel=$1 kernel_regex=$2 dtypes=${3:-bf16,f32}
out=${OUT:-.}
for dtype in ${dtypes//,/ }; do
  report="$out/ncu_${bench_kernel}_$dtype.txt"
  ncu --clock-control none --kernel-name "regex:$kernel_regex" --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    "$carry/dsmil" bench --kernel "$bench_kernel" --dtype "$dtype" --variant fast --reps 1 --warmup 0 > "$report" 2>&1
  echo "== ncu $bench_kernel $dtype (exit $?): $report"
  grep -E "^  [a-z_]+.*\(|Duration|Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Size|Grid Size|\
Waves Per SM|Warp Cycles Per Issued|Issued Ipc|Executed Ipc|Block Limit|Stall|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|\
One or More|No Eligible|Active Warps|Eligible Warps" "$report" | sed 's/  */ /g'
  grep -E "^ +(OPT|WRN|INF) " -A2 "$report" | cut -c1-400 | head -40
done
