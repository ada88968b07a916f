#!/usr/bin/env bash
# Configures and builds dsmil3d into build/ (the CUDA backend too when nvcc and cuDNN are found).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${DSMIL_CMAKE_ARGS:-}
cmake --build build -j"$(nproc)"
