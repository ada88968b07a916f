#!/usr/bin/env bash
# The tensor layer is sealed: no file outside tensor/ and kernels/ includes the CUDA backend (tensor/cuda/) or a
# kernel (kernels/); they use the op table (tensor/ops.h) and the device facade (tensor/device.h). Exempt: the
# kernel bench (apps/kernel_bench/, which times kernels alone), the GPU tests (tests/gpu/, which compare the
# backend's pieces with their CPU twins) and the fusion probe (tools/conv_fusion_probe/, which builds cuDNN graphs
# the backend does not, through its graph-API wrapper). Exit 1 with every offending line.
set -euo pipefail
cd "$(dirname "$0")/.."
offending=$(git ls-files -- '*.h' '*.cpp' '*.cu' '*.cuh' '*.inc' |
  grep -Ev '^(tensor|kernels|apps/kernel_bench|tests/gpu|tools/conv_fusion_probe)/' |
  xargs grep -nE '#include "(tensor/cuda|kernels)/' || true)
if [ -n "$offending" ]; then
  echo "check_layers: these files outside tensor/ include the CUDA backend or a kernel (use tensor/ops.h or tensor/device.h):" >&2
  echo "$offending" >&2
  exit 1
fi
echo "check_layers: the tensor layer is sealed"
