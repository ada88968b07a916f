#!/usr/bin/env bash
# On the GPU machine: does a CV's training epoch run at the benchmark's speed (issue 19: >= 90% of its bags/s)?
# `dsmil bench` times CONFIG's training step at the CV's own shape (bags a step, slabs a bag, slab depth, the grid's
# height and width, width and depth of the model) in PROCESSES processes one after the other; then one fold of a CV
# of CONFIG on the 285-case seed-1 cohort trains EPOCHS epochs alone on the GPU. Prints both rates, each epoch's
# training rate as a share of the benchmark's median rate (the first epoch holds cuDNN's algorithm searches), and
# scripts/conv_choices.py's comparison of the convolution algorithms each process chose, and where the host spent
# the epoch (building batches, queuing steps, waiting for their results).
# Usage: scripts/gpu_epoch_rate.sh [CONFIG] [EPOCHS] [PROCESSES]   (defaults: recommended-v2, 5, 2; PRECISION=fp32
# for the CPU backend, CASES=N for a smaller cohort; RATE_BEFORE=DIR measures the binaries in DIR the same way first;
# the binary runs queuing every step as it is (run.cuda_graph=false) first, then as configured, unless RATE_QUEUED=0)
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
config=${1:-recommended-v2} epochs=${2:-5} processes=${3:-2} precision=${PRECISION:-bf16}
toml=configs/$config.toml
source scripts/gpu_cohort.sh
preprocess_cohort "$toml"

read -ra shape <<< "$(bench_shape "$toml")"
rm -rf epoch_rate && mkdir -p epoch_rate

# measure LABEL DIR [SETTING...]: the benchmark's processes and the fold with the dsmil of DIR (and `--set SETTING`
# each), into epoch_rate/LABEL/.
measure() {
  local label=$1 binary=$2/dsmil out=epoch_rate/$1 settings=()
  for setting in "${@:3}"; do settings+=(--set "$setting"); done
  mkdir -p "$out"
  echo "== $label: dsmil bench --config $config ${shape[*]} --set run.precision=$precision ${settings[*]} ($processes processes)"
  for p in $(seq "$processes"); do
    "$binary" bench --config "$config" "${shape[@]}" --set "run.precision=$precision" "${settings[@]}" --steps 40 --warmup 5 \
      --json-out "$out/bench_$p.json" > "$out/bench_$p.log" 2>&1
    grep "^train step\|^host\|^device time:\|^note:" "$out/bench_$p.log"
  done
  echo "== $label: dsmil cv --config $config --folds 0, $epochs epochs, alone on the GPU"
  "$binary" cv --config "$config" --data "$cohort" --set data.cache=cohort/cache --set "run.precision=$precision" "${settings[@]}" \
    --set "train.epochs=$epochs" --set "train.min_epochs=$epochs" --folds 0 --no-audit --out "$out/runs" \
    > "$out/cv.log" 2>&1 || { tail -5 "$out/cv.log"; return 1; }
  python3 - "$out" <<'EOF'
import glob, json, statistics, sys
out = sys.argv[1]
rates = [float(line.split(";")[-1].split()[0]) for f in sorted(glob.glob(f"{out}/bench_*.log"))
         for line in open(f) if line.startswith("train step")]
bench = statistics.median(rates)


def split(record, key="step_queue_split_s"):  # the parts of the queuing (or device) time, where the binary records them
    parts = record.get(key)
    return f" (forward {parts['forward']:.2f}, backward {parts['backward']:.2f}, update {parts['update']:.2f})" if parts else ""


def graph(record):  # the steps replayed as the recorded CUDA graph (run.cuda_graph), where the binary records them
    g = record.get("step_graph")
    if not g:
        return ""
    failure = f", recording failed: {g['failure']}" if g.get("failure") else ""
    return (f"; {g['steps']} steps replayed as a CUDA graph: host {g['queue_s']:.2f} s, device {g['device_s']:.2f} s, "
            f"{g['recordings']} recordings ({g['recording_s']:.2f} s){failure}")


def device_and_thread(record):  # the device's time over the same parts and the host thread's cost, where recorded
    device, thread = record.get("step_device_split_s"), record.get("step_queue_thread")
    if not device or not thread:
        return ""
    return (f"; device over the same parts {sum(device.values()):.2f} s{split(record, 'step_device_split_s')}; "
            f"the host thread queuing: CPU {thread['cpu_s']:.2f} s, {thread['minor_faults'] + thread['major_faults']} "
            f"page faults, {thread['voluntary_switches']} voluntary / {thread['involuntary_switches']} involuntary "
            f"context switches")


print(f"benchmark: {bench:.1f} bags/s (median of the processes' {', '.join(f'{r:.1f}' for r in rates)})")
for line in open(glob.glob(f"{out}/runs/*/fold_0/metrics.jsonl")[0]):
    r = json.loads(line)
    train = r["throughput_bags_per_s"]
    print(f"epoch {r['epoch']}: training {train:.1f} bags/s ({100 * train / bench:.0f}% of the benchmark), "
          f"evaluation {r['eval_bags_per_s']:.1f} bags/s, epoch {r['epoch_time_s']:.1f} s; host: batches "
          f"{r['batch_assembly_s']:.2f} s, queuing steps {r['step_queue_s']:.2f} s{split(r)}, reading them back "
          f"{r['step_readback_s']:.2f} s{device_and_thread(r)}{graph(r)}")
EOF
  local fold_algorithms
  fold_algorithms=$(ls "$out"/runs/*/fold_0/conv_algorithms.txt 2> /dev/null) &&
    python3 scripts/conv_choices.py "$out"/bench_*.json "$fold_algorithms"
  return 0
}

[ -n "${RATE_BEFORE:-}" ] && measure before "$RATE_BEFORE"
[ "${RATE_QUEUED:-1}" = 1 ] && measure queued "$carry" run.cuda_graph=false
measure "$(basename "$carry")" "$carry"
[ -n "${OUT:-}" ] && tar czf "$OUT/epoch_rate.tar.gz" --exclude='*.ckpt' epoch_rate
exit 0
