#!/usr/bin/env bash
# Resource report of every hand-written kernel: compiles kernels/*.cu and kernels/plain/*.cu for Hopper
# with `nvcc -Xptxas -v` (the flags of kernels/CMakeLists.txt and a Release build) and writes, per file,
# each kernel's registers per thread, static shared memory, stack frame, spill stores / loads and
# barriers to notes/KERNELS-PTXAS.md. Needs nvcc only (no GPU). Usage: bash scripts/ptxas_report.sh [out.md]
set -euo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo_root/notes/KERNELS-PTXAS.md}
nvcc=${NVCC:-nvcc}
arch=sm_90a
flags=(-arch="$arch" -std=c++17 -O3 -DNDEBUG -lineinfo --expt-relaxed-constexpr -I"$repo_root" -Xptxas -v)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One table row per kernel from ptxas's lines: "Compiling entry function 'NAME'", then "N bytes stack
# frame, S bytes spill stores, L bytes spill loads", then "Used R registers, used B barriers[, M bytes smem]".
# Names are demangled, stripped of their namespaces and parameter list.
rows_of() {
  awk -v filt="c++filt" '
    function short(name,   cmd, d, depth, i, c) {
      cmd = filt " \"" name "\""; cmd | getline d; close(cmd)
      sub(/^void /, "", d)
      gsub(/dsmil::kernels::plain::|dsmil::kernels::|\(anonymous namespace\)::|dsmil::/, "", d)
      if (d ~ /^cub::/) {  # CUB sort kernels: the name without the policy template arguments
        gsub(/CUB_[0-9_]+_SM_[0-9]+::|detail::|radix_sort::/, "", d)
        sub(/<.*/, "<...>", d)
      }
      if (substr(d, length(d)) == ")") {  # drop the trailing parameter list, template arguments kept
        depth = 0
        for (i = length(d); i > 0; --i) {
          c = substr(d, i, 1)
          if (c == ")") ++depth
          else if (c == "(" && --depth == 0) { d = substr(d, 1, i - 1); break }
        }
      }
      gsub(/\|/, "\\|", d)
      return d
    }
    /Compiling entry function/ { match($0, /'\''[^'\'']+'\''/); name = substr($0, RSTART + 1, RLENGTH - 2); next }
    /bytes stack frame/ { stack = $1; spill_st = $5; spill_ld = $9; next }
    /ptxas info *: Used [0-9]+ registers/ {
      regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
      bars = "0"; if (match($0, /used [0-9]+ barriers/)) { bars = substr($0, RSTART + 5, RLENGTH - 14) }
      smem = "0"; if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH - 11) }
      printf("| `%s` | %s | %s | %s | %s / %s | %s |\n", short(name), regs, smem, stack, spill_st, spill_ld, bars)
    }'
}

{
  echo "# ptxas resource report of the hand-written kernels"
  echo
  echo "Written by \`bash scripts/ptxas_report.sh\` ($(date -u +%Y-%m-%d), $("$nvcc" --version | grep -o "release [0-9.]*, V[0-9.]*"))."
  echo "Each kernels/*.cu and kernels/plain/*.cu compiled alone: \`nvcc ${flags[*]/#-I*/-I<repo>} -c FILE\`."
  echo "Registers are per thread (the H100 has 64K per SM: 255 at most per thread, 32 per thread lets 2048"
  echo "threads stay resident); smem is static shared memory per block (dynamic shared memory is not listed);"
  echo "stack frame and spills are bytes of local memory per thread, which should be 0 in these kernels."
  for file in "$repo_root"/kernels/*.cu "$repo_root"/kernels/plain/*.cu; do
    rel=${file#"$repo_root"/}
    echo
    echo "## $rel"
    echo
    echo "| kernel | registers | smem bytes | stack bytes | spill stores / loads | barriers |"
    echo "| --- | --- | --- | --- | --- | --- |"
    if ! "$nvcc" "${flags[@]}" -c "$file" -o "$work/kernel.o" > "$work/ptxas.log" 2>&1; then
      echo "| (compilation failed: $(grep -m1 -i error "$work/ptxas.log" | tr '|' '/')) | | | | | |"
      continue
    fi
    rows_of < "$work/ptxas.log" | sort
  done
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
