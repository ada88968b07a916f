#!/usr/bin/env python3
"""Summary of tuning runs (scripts/gpu_tune.sh): for each run, the training and inner-validation curves and the
training-health figures from its metrics.jsonl. Reads no prediction file: tuning never looks at test folds.

Usage: tune_summary.py RUNS_ROOT [--json OUT.json]
Columns: onset = first epoch whose training AUC reaches 0.75; tr@E / va@E = training AUC and inner-validation AUC
(the better of the raw and EMA models) at epoch E; best va = the highest inner-validation AUC and its epoch;
upd = median encoder update-to-weight ratio at epoch 3; spread = training logit spread at epoch 3; s/ep = seconds
per epoch.
"""
import glob
import json
import os
import sys

CHECKPOINTS = (5, 10, 15, 20, 25, 30, 40)


def val_auc(record):
    values = [record[k]["auc"] for k in ("val", "val_ema") if record.get(k) and record[k].get("auc") is not None]
    return max(values) if values else float("nan")


def encoder_ratio(record):
    ratios = sorted(v for k, v in record.get("health", {}).get("update_ratio", {}).items() if k != "head" and v is not None)
    return ratios[len(ratios) // 2] if ratios else float("nan")


def fmt(x, digits=2):
    return "  -  " if x is None or x != x else f"{x:.{digits}f}"


def summarise(path):
    records = [json.loads(line) for line in open(path) if line.strip()]
    train = [r["train"]["auc"] if r["train"]["auc"] is not None else float("nan") for r in records]
    val = [val_auc(r) for r in records]
    onset = next((r["epoch"] for r, a in zip(records, train) if a >= 0.75), None)
    best = max(range(len(val)), key=lambda i: (val[i] if val[i] == val[i] else -1)) if val else None
    third = records[min(2, len(records) - 1)]
    return {
        "epochs": len(records),
        "onset": onset,
        "train_auc": train,
        "val_auc": val,
        "best_val": val[best] if best is not None else None,
        "best_val_epoch": best + 1 if best is not None else None,
        "update_ratio_e3": encoder_ratio(third),
        "logit_spread_e3": third.get("health", {}).get("logit_spread"),
        "seconds_per_epoch": sum(r.get("epoch_time_s", 0) for r in records) / max(len(records), 1),
        "warnings": sum(1 for r in records if r.get("health", {}).get("warning")),
    }


def main():
    root = sys.argv[1]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    rows = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "*", "fold_*", "metrics.jsonl"))):
        run = os.path.relpath(path, root).split(os.sep)[0]
        rows[run] = summarise(path)
    header = f"{'run':<26}{'ep':>3}{'onset':>6} " + " ".join(f"tr@{e:<2} va@{e:<2}" for e in CHECKPOINTS)
    header += f" {'best va':>10} {'upd':>8} {'spread':>6} {'s/ep':>5}"
    print(header)
    for run, s in rows.items():
        cells = []
        for e in CHECKPOINTS:
            if e <= s["epochs"]:
                cells.append(f"{fmt(s['train_auc'][e - 1])} {fmt(s['val_auc'][e - 1])}")
            else:
                cells.append(" " * 9)
        onset = str(s["onset"]) if s["onset"] else "-"
        print(f"{run:<26}{s['epochs']:>3}{onset:>6} " + "   ".join(cells) +
              f" {fmt(s['best_val'])}@{s['best_val_epoch'] or '-':<3} {s['update_ratio_e3']:>8.1e} "
              f"{fmt(s['logit_spread_e3']):>6} {s['seconds_per_epoch']:>5.2f}")
    if out_json:
        with open(out_json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
