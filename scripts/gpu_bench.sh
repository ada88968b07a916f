#!/usr/bin/env bash
# Side by side on one GPU, same shapes (DESIGN section 11: 2 bags x 32 slabs of 4x4x128x128, ResNet18-3D
# width 64, top-k pooling, gated attention): `dsmil bench` and the PyTorch twin (tools/torch_twin/bench.py),
# each side in several processes (torch.compile varies between processes), then one table of best and
# median step times and their ratios. Usage (GPU machine): scripts/gpu_bench.sh CARRY_DIR LOG_DIR [RUNS]
set -u
carry=$1 logs=$2 runs=${3:-3}
repo_root=$(cd "$(dirname "$0")/.." && pwd)
shape=(--bags 2 --instances 32 --slab 4 --size 128 --width 64 --depth 18)
: > "$logs/bench_torch.jsonl"
for i in $(seq "$runs"); do
  for precision in fp32 bf16; do
    "$carry/dsmil" bench "${shape[@]}" --set model.topk=3 --set run.precision=$precision --steps 20 --warmup 5 \
        --json-out "$logs/bench_dsmil_${precision}_$i.json" > "$logs/bench_dsmil_${precision}_$i.log" 2>&1 \
      || tail -5 "$logs/bench_dsmil_${precision}_$i.log"
  done
  for mode in eager_fp32 eager_bf16_cl; do
    python3 "$repo_root/tools/torch_twin/bench.py" --modes "$mode" "${shape[@]}" --steps 30 --warmup 10 \
        --json-out "$logs/bench_torch.jsonl" --label "run$i" > "$logs/bench_torch_${mode}_$i.log" 2>&1 \
      || tail -5 "$logs/bench_torch_${mode}_$i.log"
  done
done
if [ "${DSMIL_BENCH_COMPILE:-1}" = 1 ]; then
  timeout 240 python3 "$repo_root/tools/torch_twin/bench.py" --modes compile_bf16_cl "${shape[@]}" --steps 30 --warmup 10 \
      --json-out "$logs/bench_torch.jsonl" --label run1 > "$logs/bench_torch_compile.log" 2>&1 || tail -5 "$logs/bench_torch_compile.log"
fi
python3 - "$logs" <<'PY'
import glob, json, statistics, sys
logs = sys.argv[1]
rows = {}
for f in sorted(glob.glob(f"{logs}/bench_dsmil_*.json")):
    j = json.load(open(f))
    rows.setdefault(f"dsmil {j['precision']}", []).append((j["best_ms"], j["median_ms"], j["peak_gib"]))
for line in open(f"{logs}/bench_torch.jsonl"):
    j = json.loads(line)
    rows.setdefault("torch " + j["mode"], []).append((j["best_ms"], j["median_ms"], j["peak_alloc_mib"] / 1024))
print(f"{'side':26s} {'runs':>4s} {'best ms':>9s} {'median of medians':>18s} {'peak GiB':>9s}")
summary = {}
for name, vals in rows.items():
    best = min(v[0] for v in vals); med = statistics.median(v[1] for v in vals); peak = max(v[2] for v in vals)
    summary[name] = (best, med)
    print(f"{name:26s} {len(vals):4d} {best:9.2f} {med:18.2f} {peak:9.2f}")
pairs = [("dsmil fp32", "torch eager_fp32"), ("dsmil bf16", "torch eager_bf16_cl"), ("dsmil bf16", "torch compile_bf16_cl")]
for ours, theirs in pairs:
    if ours in summary and theirs in summary:
        (ob, om), (tb, tm) = summary[ours], summary[theirs]
        print(f"ratio {ours} / {theirs}: best {ob / tb:.2f}x, median {om / tm:.2f}x (below 1 = dsmil faster)")
PY
