#!/usr/bin/env bash
# Side by side on one GPU, same shapes (DESIGN section 11: 2 bags x 32 slabs of 4x4x128x128, ResNet18-3D
# width 64, top-k pooling, gated attention): `dsmil bench` and the PyTorch twin (tools/torch_twin/bench.py),
# each side in several processes (torch.compile varies between processes), then one table of best and
# median step times and their ratios, and device memory (peak of the timed steps, held between steps, in use
# after the forward pass). Usage (GPU machine): scripts/gpu_bench.sh CARRY_DIR LOG_DIR [RUNS]
# DSMIL_BENCH_UNFOLDED=1 adds dsmil rows with the stem convolution on its input as it is (run.conv_fold=never),
# DSMIL_BENCH_CUDNN_STEM=1 bf16 rows with the folded stem's forward on cuDNN instead of the implicit GEMM
# (run.conv16_kernel=cudnn): the before / after of each in one call. DSMIL_BENCH_BEFORE=DIR adds the rows of the
# dsmil binary in DIR (another commit's carry folder), run interleaved with this one: a change's before and after in
# one call. DSMIL_BENCH_COMPILE_RUNS: processes of torch.compile (default 1; each compiles anew, about a minute).
# dsmil's rows replay the step recorded as a CUDA graph (run.cuda_graph, the default); DSMIL_BENCH_QUEUED=0 drops the
# rows of the same binary queuing every step as it is (run.cuda_graph=false), which are there by default.
# DSMIL_BENCH_PRECISIONS (default "fp32 bf16") and DSMIL_BENCH_TORCH_MODES (default "eager_fp32 eager_bf16_cl") narrow
# the rows where a call's device time is short.
set -u
carry=$1 logs=$2 runs=${3:-3}
repo_root=$(cd "$(dirname "$0")/.." && pwd)
shape=(--bags 2 --instances 32 --slab 4 --size 128 --width 64 --depth 18)
# Each variant: file suffix, binary folder, precisions, extra settings.
precisions=${DSMIL_BENCH_PRECISIONS:-fp32 bf16}
variants=("|$carry|$precisions|")
[ -n "${DSMIL_BENCH_BEFORE:-}" ] && variants+=("_before|$DSMIL_BENCH_BEFORE|$precisions|")
[ "${DSMIL_BENCH_UNFOLDED:-0}" = 1 ] && variants+=("_unfolded|$carry|$precisions|--set run.conv_fold=never")
[ "${DSMIL_BENCH_CUDNN_STEM:-0}" = 1 ] && variants+=("_cudnn_stem|$carry|bf16|--set run.conv16_kernel=cudnn")
[ "${DSMIL_BENCH_QUEUED:-1}" = 1 ] && variants+=("_queued|$carry|$precisions|--set run.cuda_graph=false")
: > "$logs/bench_torch.jsonl"
for i in $(seq "$runs"); do
  for variant in "${variants[@]}"; do
    IFS='|' read -r suffix binaries precisions settings <<< "$variant"
    for precision in $precisions; do
      # shellcheck disable=SC2086  # settings: words on purpose
      "$binaries/dsmil" bench "${shape[@]}" --set model.topk=3 --set run.precision=$precision $settings \
          --steps 20 --warmup 5 --json-out "$logs/bench_dsmil_${precision}${suffix}_$i.json" \
          > "$logs/bench_dsmil_${precision}${suffix}_$i.log" 2>&1 || tail -5 "$logs/bench_dsmil_${precision}${suffix}_$i.log"
    done
  done
  for mode in ${DSMIL_BENCH_TORCH_MODES-eager_fp32 eager_bf16_cl}; do
    python3 "$repo_root/tools/torch_twin/bench.py" --modes "$mode" "${shape[@]}" --steps 30 --warmup 10 \
        --json-out "$logs/bench_torch.jsonl" --label "run$i" > "$logs/bench_torch_${mode}_$i.log" 2>&1 \
      || tail -5 "$logs/bench_torch_${mode}_$i.log"
  done
done
if [ "${DSMIL_BENCH_COMPILE:-1}" = 1 ]; then
  for i in $(seq "${DSMIL_BENCH_COMPILE_RUNS:-1}"); do
    timeout 240 python3 "$repo_root/tools/torch_twin/bench.py" --modes compile_bf16_cl "${shape[@]}" --steps 30 --warmup 10 \
        --json-out "$logs/bench_torch.jsonl" --label "run$i" > "$logs/bench_torch_compile_$i.log" 2>&1 \
      || tail -5 "$logs/bench_torch_compile_$i.log"
  done
fi
python3 - "$logs" <<'PY'
import glob, json, os, statistics, sys
logs = sys.argv[1]
rows = {}
for f in sorted(glob.glob(f"{logs}/bench_dsmil_*.json")):
    j = json.load(open(f))
    variant = os.path.basename(f)[len(f"bench_dsmil_{j['precision']}"):].rsplit("_", 1)[0]
    name = f"dsmil {j['precision']}" + variant.replace("_", " ")
    rows.setdefault(name, []).append((j["best_ms"], j["median_ms"], j["peak_gib"], j.get("between_steps_gib", 0),
                                      j.get("after_forward_gib", 0)))
for line in open(f"{logs}/bench_torch.jsonl"):
    j = json.loads(line)
    rows.setdefault("torch " + j["mode"], []).append((j["best_ms"], j["median_ms"], j["peak_alloc_mib"] / 1024,
                                                       j.get("between_steps_mib", 0) / 1024,
                                                       j.get("after_forward_mib", 0) / 1024))
print(f"{'side':26s} {'runs':>4s} {'best ms':>9s} {'median of medians':>18s} {'peak GiB':>9s} {'held GiB':>9s} "
      f"{'after fwd GiB':>14s}")
summary = {}
for name, vals in rows.items():
    best = min(v[0] for v in vals); med = statistics.median(v[1] for v in vals); peak = max(v[2] for v in vals)
    summary[name] = (best, med, peak)
    print(f"{name:26s} {len(vals):4d} {best:9.2f} {med:18.2f} {peak:9.2f} {vals[0][3]:9.2f} {vals[0][4]:14.2f}")
pairs = [("dsmil fp32", "torch eager_fp32"), ("dsmil bf16", "torch eager_bf16_cl"), ("dsmil bf16", "torch compile_bf16_cl"),
         ("dsmil bf16", "dsmil bf16 unfolded"), ("dsmil fp32", "dsmil fp32 unfolded"),
         ("dsmil bf16", "dsmil bf16 cudnn stem"), ("dsmil bf16", "dsmil bf16 queued"),
         ("dsmil fp32", "dsmil fp32 queued"), ("dsmil bf16 queued", "torch compile_bf16_cl")]
for ours, theirs in pairs:
    if ours in summary and theirs in summary:
        (ob, om, op), (tb, tm, tp) = summary[ours], summary[theirs]
        print(f"ratio {ours} / {theirs}: best {ob / tb:.2f}x, median {om / tm:.2f}x, peak memory {op / tp:.2f}x "
              f"(below 1 = dsmil faster / smaller)")
PY
