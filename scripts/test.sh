#!/usr/bin/env bash
# The test command (README, CI): installs what is missing, builds, runs every test that needs no GPU.
# GPU tests carry the label `gpu` and are run on a GPU machine by scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/check_layers.sh
bash scripts/build.sh
cd build
gpu_tests=$(ctest -N -L gpu | sed -n 's/^Total Tests: //p')
echo "GPU tests (label gpu): ${gpu_tests:-0} not run here; on a GPU machine: scripts/gpu_check.sh"
ctest --output-on-failure -LE gpu -j"$(nproc)" --timeout 900
