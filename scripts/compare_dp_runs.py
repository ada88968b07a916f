#!/usr/bin/env python3
"""Compares cv runs of fold 0 made with different data-parallel settings (scripts/gpu_dp.sh).

Default: the first run is the reference (one process); for each other run, the epoch records' train and
validation numbers and the fold's predictions (p_hgg per case and split) as differences from it.
--speed: training bags/s and epoch time per epoch of each run, and the ratio to the first.
"""
import csv
import json
import pathlib
import sys


def fold_dir(run_root):
    dirs = sorted(pathlib.Path(run_root).glob("*/fold_0"))
    if not dirs:
        sys.exit(f"{run_root}: no */fold_0 inside")
    return dirs[-1]


def records(run_root):
    with open(fold_dir(run_root) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def predictions(run_root):
    with open(fold_dir(run_root) / "predictions.csv") as f:
        return {(row["case_id"], row["split"]): float(row["p_hgg"]) for row in csv.DictReader(f)}


def equivalence(runs):
    ref_records, ref_pred = records(runs[0]), predictions(runs[0])
    print(f"reference: {runs[0]}")
    for run in runs[1:]:
        recs, pred = records(run), predictions(run)
        print(f"\n{run}")
        for a, b in zip(ref_records, recs):
            dp = b.get("data_parallel", {})
            print(f"  epoch {a['epoch']}: ranks {dp.get('ranks', 1)}, sync_batchnorm {dp.get('sync_batchnorm')}, "
                  f"bags left out {dp.get('left_out_bags')}, gradient buckets started in the backward pass "
                  f"{dp.get('buckets_started_in_backward')} of {dp.get('gradient_buckets')}")
            x, y = a.get("grad_norm_first_step"), b.get("grad_norm_first_step")
            if x is not None and y is not None:
                print(f"    gradient norm of the first step {x:.6g} -> {y:.6g}  (relative diff {(y - x) / x:+.2e})")
            for split in ("train", "val", "val_ema"):
                for key in ("loss", "auc"):
                    x, y = a[split][key], b[split][key]
                    if x is None or y is None:
                        continue
                    print(f"    {split:8s} {key:5s} {x:.6f} -> {y:.6f}  (diff {y - x:+.2e})")
        common = sorted(set(ref_pred) & set(pred))
        diffs = [abs(pred[k] - ref_pred[k]) for k in common]
        print(f"  predictions: {len(common)} cases in both, max |p_hgg diff| {max(diffs):.2e}, "
              f"mean {sum(diffs) / len(diffs):.2e}")


def speed(runs):
    base = None
    for run in runs:
        recs = records(run)
        rates = [r["throughput_bags_per_s"] for r in recs]
        steady = rates[1:] if len(rates) > 1 else rates  # the first epoch pays cuDNN's algorithm search
        mean = sum(steady) / len(steady)
        base = base or mean
        print(f"{run}: train bags/s per epoch {', '.join(f'{x:.1f}' for x in rates)}; "
              f"after epoch 1 {mean:.1f} ({mean / base:.2f}x the first run); "
              f"epoch time {', '.join('%.1f' % r['epoch_time_s'] for r in recs)} s")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--speed":
        speed(args[1:])
    else:
        equivalence(args)
