#!/usr/bin/env bash
# The parity check on a GPU machine: for every pooling x attention and each numeric mode, `dsmil
# parity-dump` writes one forward/backward of the C++ model (CUDA backend, and once the CPU backend),
# and parity.py recomputes it with the PyTorch twin in float64 and compares logits, loss, embeddings,
# margins, attention and every parameter gradient (tolerances in BUNDLE.md). Needs DSMIL_BIN.
set -u
here=$(cd "$(dirname "$0")" && pwd)
bundles=${OUT:-/tmp}/parity_bundles
rm -rf "$bundles" && mkdir -p "$bundles"
failed=0 total=0
check() {  # name, dump arguments...
  local name=$1; shift
  total=$((total + 1))
  if ! "$DSMIL_BIN" parity-dump --out "$bundles/$name" "$@" > "$bundles/$name.dump.log" 2>&1; then
    echo "parity $name: dump FAILED: $(tail -1 "$bundles/$name.dump.log")"; failed=$((failed + 1)); return
  fi
  if python3 "$here/parity.py" "$bundles/$name" > "$bundles/$name.log" 2>&1; then
    echo "parity $name: $(grep '^parity:' "$bundles/$name.log")"
  else
    echo "parity $name: FAILED: $(grep '^parity:' "$bundles/$name.log" || tail -3 "$bundles/$name.log")"
    grep -E "FAIL" "$bundles/$name.log" | head -8
    echo "  replay with the dump's seed: $(head -1 "$bundles/$name.dump.log")"
    failed=$((failed + 1))
  fi
}
for pooling in max topk soft; do
  for attention in dsmil gated; do
    check "cuda_fp32_${pooling}_${attention}" --device cuda --precision fp32 --pooling "$pooling" --attention "$attention" --depth 18 --width 8
  done
done
check cuda_tf32_topk_gated --device cuda --precision tf32 --pooling topk --attention gated --depth 18 --width 16
check cuda_bf16_topk_gated --device cuda --precision bf16 --pooling topk --attention gated --depth 18 --width 16
check cuda_bf16_soft_dsmil --device cuda --precision bf16 --pooling soft --attention dsmil --depth 18 --width 16
check cpu_fp32_topk_dsmil --device cpu --precision fp32 --pooling topk --attention dsmil --depth 10 --width 8
echo "parity bundles: $((total - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
