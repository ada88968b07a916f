#!/usr/bin/env bash
# On the GPU machine: does a CV's training epoch run at the benchmark's speed (issue 19: >= 90% of its bags/s)?
# `dsmil bench` times CONFIG's training step at the CV's own shape (bags a step, slabs a bag, slab depth, the grid's
# height and width, width and depth of the model) in PROCESSES processes one after the other; then one fold of a CV
# of CONFIG on the 285-case seed-1 cohort trains EPOCHS epochs alone on the GPU. Prints both rates and each epoch's
# training rate as a share of the benchmark's median rate (the first epoch holds cuDNN's algorithm searches).
# Usage: scripts/gpu_epoch_rate.sh [CONFIG] [EPOCHS] [PROCESSES]   (defaults: recommended-v2, 5, 2; PRECISION=fp32
# for the CPU backend, CASES=N for a smaller cohort)
set -uo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
carry=${DSMIL_CARRY:-$repo_root/build-cuda-carry}
source scripts/gpu_env.sh
config=${1:-recommended-v2} epochs=${2:-5} processes=${3:-2} precision=${PRECISION:-bf16}
toml=configs/$config.toml
source scripts/gpu_cohort.sh
preprocess_cohort "$toml"

key() { sed -n "s/^$1 = \(.*\)$/\1/p" "$toml" | head -1; }
grid=$(sed -n "s/^grid = [\"']\(.*\)[\"']$/\1/p" "$toml")
size=$(echo "${grid:-128,128,128}" | cut -d, -f2)
shape=(--bags "$(key bags_per_step)" --instances "$(key instances)" --slab "$(key slab_depth)" --size "$size"
       --width "$(key width)" --depth "$(key depth)")
echo "== dsmil bench --config $config ${shape[*]} --set run.precision=$precision ($processes processes)"
for p in $(seq "$processes"); do
  "$carry/dsmil" bench --config "$config" "${shape[@]}" --set "run.precision=$precision" --steps 40 --warmup 5 \
    | grep "^train step"
done | tee epoch_rate_bench.txt
bench_rate=$(awk '{print $(NF-1)}' epoch_rate_bench.txt | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')

echo "== dsmil cv --config $config --folds 0, $epochs epochs, alone on the GPU"
rm -rf runs-rate
"$carry/dsmil" cv --config "$config" --data "$cohort" --set data.cache=cohort/cache --set "run.precision=$precision" \
  --set "train.epochs=$epochs" --set "train.min_epochs=$epochs" --folds 0 --no-audit --out runs-rate \
  > epoch_rate_cv.log 2>&1 || { tail -5 epoch_rate_cv.log; exit 1; }
metrics=$(ls runs-rate/*/fold_0/metrics.jsonl)
python3 - "$metrics" "$bench_rate" <<'EOF'
import json, sys
bench = float(sys.argv[2])
print(f"benchmark (median of the processes' median steps): {bench:.1f} bags/s")
for line in open(sys.argv[1]):
    r = json.loads(line)
    train = r["throughput_bags_per_s"]
    print(f"epoch {r['epoch']}: training {train:.1f} bags/s ({100 * train / bench:.0f}% of the benchmark), "
          f"evaluation {r['eval_bags_per_s']:.1f} bags/s, epoch {r['epoch_time_s']:.1f} s")
EOF
[ -n "${OUT:-}" ] && tar czf "$OUT/epoch_rate.tar.gz" epoch_rate_bench.txt epoch_rate_cv.log "$metrics"
exit 0
