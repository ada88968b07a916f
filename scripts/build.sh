#!/usr/bin/env bash
# Configures and builds dsmil3d into build/ (the CUDA backend too when nvcc and cuDNN are found).
# Usage: scripts/build.sh [TARGET ...]: only those targets (e.g. dsmil), else everything; the compile lines
# ("[ 42%] Building ...") are the progress.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${DSMIL_CMAKE_ARGS:-}
targets=()
for target in "$@"; do targets+=(--target "$target"); done
cmake --build build -j"$(nproc)" "${targets[@]}"
