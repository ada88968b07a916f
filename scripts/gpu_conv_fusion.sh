#!/usr/bin/env bash
# On the GPU machine: the fused route of issue 19 measured before it is built (notes/PERF.md). conv_fusion_probe times
# each bf16 forward convolution of the DESIGN section 11 step alone, with the batch-norm statistics of its output
# fused (cuDNN genstats), and with the previous batch norm's scale-bias-ReLU fused in front as well; then the kernel
# bench times dsmil's own batch-norm passes at the same output shapes: what the fusions would take out of the step.
# Usage: scripts/gpu_conv_fusion.sh   (carry build-cuda-carry, holding conv_fusion_probe beside dsmil)
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
echo "== cuDNN's fusions of the step's forward convolutions (bf16, channels-last)"
"$carry/conv_fusion_probe"
echo "== dsmil's batch-norm passes at the convolutions' output shapes (kernel bench, bf16)"
for shape in 64,4,64,64,64 64,4,32,32,64 64,4,16,16,128 64,4,8,8,256 64,4,4,4,512; do
  for kernel in batchnorm_statistics batchnorm_relu_apply; do
    "$carry/dsmil" bench --kernel "$kernel" --dtype bf16 --shape "$shape" --reps 50 2>&1 |
      grep -E "^$kernel " | awk -v shape="$shape" '{print shape, $0}'
  done
done
