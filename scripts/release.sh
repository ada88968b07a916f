#!/usr/bin/env bash
# The release archive in one command: configures a build folder of its own, builds dsmil and packs it with
# CPack (release/CMakeLists.txt) into dsmil-<version>-linux-x86_64.tar.gz, or dsmil-<version>-linux-x86_64-cpu.tar.gz
# for a build without the CUDA backend (--cpu, DSMIL_CMAKE_ARGS=-DDSMIL_CUDA=OFF, or no CUDA toolkit found).
# Usage: scripts/release.sh [--cpu] [--build-dir DIR]
#   --cpu            leave the CUDA backend out
#   --build-dir DIR  build in DIR (default build-release, or build-release-cpu with --cpu); a folder configured
#                    before keeps its other options. Packing the build/ of scripts/test.sh (CI) relinks its dsmil
#                    alone, for DSMIL_RELEASE: that dsmil then loads its RPATH's libraries before LD_LIBRARY_PATH's.
# The build's and CPack's lines go to stderr; stdout ends with the archive's sizes, then its path alone.
set -euo pipefail

cmake_args=(-DCMAKE_BUILD_TYPE=Release -DDSMIL_RELEASE=ON)
build=
cpu=0
while (($#)); do
  case "$1" in
    --cpu) cpu=1; cmake_args+=(-DDSMIL_CUDA=OFF); shift ;;
    --build-dir) build=$(realpath -m "$2"); shift 2 ;;
    *) echo "release.sh: unknown argument '$1' (usage: scripts/release.sh [--cpu] [--build-dir DIR])" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
if [ -z "$build" ]; then
  if ((cpu)); then build="build-release-cpu"; else build="build-release"; fi
fi

{
  bash scripts/deps.sh
  # shellcheck disable=SC2086  # DSMIL_CMAKE_ARGS holds several arguments, as in scripts/build.sh
  cmake -S . -B "$build" "${cmake_args[@]}" ${DSMIL_CMAKE_ARGS:-}
  cmake --build "$build" -j"$(nproc)" --target dsmil
  (cd "$build" && cpack -G TGZ)
} >&2
# CPack's staging copy of the tree, as large as the unpacked archive (1.4 GB for the CUDA build)
rm -rf "$build/_CPack_Packages"

# The name CMake chose, from the build's own CPack settings (it has "-cpu" exactly when the backend is left out).
name=$(sed -n 's/^set(CPACK_PACKAGE_FILE_NAME "\(.*\)")$/\1/p' "$build/CPackConfig.cmake")
archive=$(realpath "$build/$name.tar.gz")
unpacked=$(tar -tzvf "$archive" | awk '{ total += $3 } END { printf "%.1f", total / 1048576 }')
packed=$(du -b "$archive" | awk '{ printf "%.1f", $1 / 1048576 }')
echo "$name.tar.gz: $packed MiB packed, $unpacked MiB unpacked (RELEASE.txt inside: build, needs, sizes)"
echo "$archive"
