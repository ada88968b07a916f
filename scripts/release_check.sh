#!/usr/bin/env bash
# CI, after the tests: the release archive works where it is unpacked. Packs the build scripts/test.sh made
# (scripts/release.sh --build-dir, which relinks dsmil alone), unpacks it into a temporary folder and, from there
# (outside the clone) with LD_LIBRARY_PATH unset:
#   - every library bin/dsmil loads, glibc's and the C++ runtime's aside, comes from the archive's lib/ (ldd);
#   - `dsmil --version` runs, and a config name is looked up in the archive's share/dsmil/configs/;
#   - a reproduce round trip: a 24-case synthetic cohort, a one-fold CV of the tiny config (2 epochs, the config
#     found inside the archive), then `dsmil reproduce` of that run, which must find the predictions identical
#     and exit 0.
# Usage: scripts/release_check.sh [BUILD_DIR]  (default build/)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$(realpath -m "${1:-$repo/build}")
start=$SECONDS

release=$(bash "$repo/scripts/release.sh" --build-dir "$build")
echo "$release"
archive=$(tail -1 <<< "$release")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$archive" -C "$work"
unpacked=$work/$(basename "$archive" .tar.gz)
dsmil=$unpacked/bin/dsmil
cd "$work"
unset LD_LIBRARY_PATH
echo "== release check in $work (packed and unpacked after $((SECONDS - start)) s)"

# glibc's and the C++ runtime's, which the archive leaves to the system (release/install_libraries.cmake)
system_libraries='linux-vdso|ld-linux|lib(c|m|mvec|dl|rt|pthread|resolv|util|stdc\+\+|gcc_s)\.so'
echo "== ldd bin/dsmil"
ldd "$dsmil" | sed "s|$unpacked|<archive>|g"
outside=$(ldd "$dsmil" | grep -Ev "$system_libraries" | grep -Ev "=> $unpacked/(bin/\.\./)?lib/" || true)
if [ -n "$outside" ]; then
  echo "release check: FAIL: bin/dsmil loads libraries from outside the archive:" >&2
  echo "$outside" >&2
  exit 1
fi

echo "== dsmil --version"
"$dsmil" --version

fail() {
  echo "release check: FAIL: $*" >&2
  exit 1
}
# Runs a command with its stderr in a log, shown only when it fails.
quietly() {
  local log=$1
  shift
  "$@" 2> "$log" || { cat "$log" >&2; fail "$*"; }
}

# CI's clone holds configs/ too: a config name must be looked up in the archive, ahead of the source tree.
missing_config=$("$dsmil" cv --config no-such-config --data . 2>&1 || true)
[[ $missing_config == *"$unpacked/share/dsmil/configs/no-such-config.toml, "* ]] ||
  fail "configs are not looked up in the archive: $missing_config"

echo "== reproduce round trip"
quietly cohort.log "$dsmil" cohort --out cohort --cases 24 --dims 64,64,48 --seed 5 --threads 2 > /dev/null
quietly cv.log "$dsmil" cv --config tiny --data cohort --set data.cache=cache --set train.epochs=2 \
  --set train.min_epochs=2 --set cv.folds=2 --folds 0 --no-audit --out runs > /dev/null
run_dir=$(find runs -mindepth 1 -maxdepth 1 -type d)
quietly reproduce.log "$dsmil" reproduce "$run_dir" | tee reproduce.out
grep -q "predictions identical" reproduce.out || fail "reproduce did not find the predictions identical"
grep -q "verdict: REPRODUCED" reproduce.out || fail "reproduce did not reproduce the run"
echo "release check: PASS ($(basename "$archive"), $((SECONDS - start)) s)"
