#!/usr/bin/env python3
"""Summary of tuning runs (scripts/gpu_tune.sh): for each run, the training and inner-validation curves and the
training-health figures from its metrics.jsonl. Reads no prediction file: tuning never looks at test folds.

Usage: tune_summary.py RUNS_ROOT [--json OUT.json] [--selection T1,T2,... [--min-epochs N]] [--onsets BASE] [--curves]
                       [--late BASE]
Columns: onset = first epoch whose training AUC reaches 0.75; tr@E / va@E = training AUC and inner-validation AUC
(the better of the raw and EMA models) at epoch E; best va = the highest inner-validation AUC and its epoch;
upd = median encoder update-to-weight ratio at epoch 3; spread = training logit spread at epoch 3; loss1 = mean
training loss of epoch 1; gn1 = global gradient norm of the first step; s/ep = seconds per epoch. A run directory
holding several folds gives a row per fold (RUN_fK).
--selection replays apps/train/model_selection.cpp over each run's curves for each opening threshold T
(train.selection_train_auc; monitor, patience and min_epochs from the run's config.toml): the epoch it would select,
the epoch it would stop at, and the training and inner-validation AUC of the selected model. scripts/gpu_tune.sh
sets train.min_epochs to the epochs run (whole curves): --min-epochs N replays the stopping rule of a config with N.
--onsets BASE compares onsets across variants run on the same seeds and folds: rows named VARIANT_SEED_fK (or
VARIANT_sSEED_fK) are grouped by variant and paired with variant BASE by (seed, fold); a run that never reaches 0.75
counts as later than any run that does; a shorter run that has not reached it is left out. Per variant: runs, runs
that never left chance, median onset, and against BASE the pairs where it left sooner / later / at the same epoch,
with the one-sided sign-test p of "sooner".
--curves: per variant (rows named as for --onsets), the training and inner-validation AUC at the checkpoint epochs
averaged over its runs, and the inner-validation AUC averaged over each run's epochs after the tenth: a variant's
level once learned, without the upward bias of picking each run's best epoch.
--late BASE: each variant's late inner-validation AUC (the mean over epochs 11+) against variant BASE's, paired by seed
and fold: the mean difference, the pairs where it is higher / lower / equal (to 3 decimals), and the one-sided sign-test
p of "higher".
"""
import glob
import json
import math
import os
import re
import sys
import tomllib

CHECKPOINTS = (5, 10, 15, 20, 25, 30, 40)


def val_auc(record):
    values = [record[k]["auc"] for k in ("val", "val_ema") if record.get(k) and record[k].get("auc") is not None]
    return max(values) if values else float("nan")


def encoder_ratio(record):
    ratios = sorted(v for k, v in record.get("health", {}).get("update_ratio", {}).items() if k != "head" and v is not None)
    return ratios[len(ratios) // 2] if ratios else float("nan")


def fmt(x, digits=2):
    return "  -  " if x is None or x != x else f"{x:.{digits}f}"


def fold_runs(root):
    """(row name, fold directory, epoch records) of every fold's metrics.jsonl under RUNS_ROOT, in name order."""
    runs = []
    for path in sorted(glob.glob(os.path.join(root, "*", "*", "fold_*", "metrics.jsonl"))):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        if records:  # a run that has not finished its first epoch has nothing to show
            runs.append((row_name(root, path), os.path.dirname(path), records))
    return runs


def summarise(records):
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
        "loss_e1": records[0]["train"].get("loss"),
        "grad_norm_first_step": records[0].get("grad_norm_first_step"),
        "seconds_per_epoch": sum(r.get("epoch_time_s", 0) for r in records) / max(len(records), 1),
        "warnings": sum(1 for r in records if r.get("health", {}).get("warning")),
    }


def monitor_value(monitor, val):
    """apps/train/model_selection.cpp monitor_value: NaN when undefined."""
    if not val:
        return math.nan
    if monitor == "min_class_recall":
        lgg, hgg = val.get("recall_lgg"), val.get("recall_hgg")
        return math.nan if lgg is None or hgg is None else min(lgg, hgg)
    v = val.get(monitor)
    return math.nan if v is None else v


def replay_selection(records, train_cfg, opening):
    """The epoch ModelSelection would select and the epoch it would stop at, had selection opened at `opening`."""
    monitor, patience, min_epochs, epochs = (train_cfg["monitor"], train_cfg["patience"], train_cfg["min_epochs"],
                                             train_cfg["epochs"])
    has_ema = train_cfg.get("ema_decay", 0) > 0

    def candidate(val, epoch):
        value = monitor_value(monitor, val)
        score = -math.inf if value != value else (-value if monitor == "loss" else value)
        auc = val.get("auc") if val and val.get("auc") is not None else -math.inf
        return (score, auc, epoch)

    best = {"val": None, "val_ema": None}
    opened = False
    stop = records[-1]["epoch"]
    for r in records:
        epoch, train_auc = r["epoch"], r["train"]["auc"]
        # model_selection.cpp opens on !(train_auc < T): an undefined training AUC (null) opens it too.
        if not opened and (train_auc is None or train_auc >= opening):
            opened, best = True, {"val": None, "val_ema": None}
        for key in ("val", "val_ema") if has_ema else ("val",):
            c = candidate(r.get(key), epoch)
            if best[key] is None or c[:2] > best[key][:2]:
                best[key] = c
        overall = max((b for b in best.values() if b), key=lambda b: b[:2])
        if opened and epoch < epochs and epoch >= min_epochs and epoch - overall[2] >= patience:
            stop = epoch
            break
    overall = max((b for b in best.values() if b), key=lambda b: b[:2])
    chosen = records[overall[2] - 1]
    model = "val_ema" if best["val_ema"] and overall is best["val_ema"] else "val"
    return overall[2], stop, chosen["train"]["auc"], (chosen.get(model) or {}).get("auc")


def print_selection(runs, openings, min_epochs):
    print(f"\nmodel selection replayed (selected epoch / stopping epoch, training AUC and inner-val AUC at the selected epoch)")
    print(f"{'run':<26}" + "".join(f"{'opening at ' + format(t, 'g'):<30}" for t in openings))
    for run, fold_dir, records in runs:
        with open(os.path.join(os.path.dirname(fold_dir), "config.toml"), "rb") as f:
            train_cfg = tomllib.load(f)["train"]
        if min_epochs is not None:
            train_cfg["min_epochs"] = min_epochs
        cells = []
        for t in openings:
            epoch, stop, tr, va = replay_selection(records, train_cfg, t)
            cells.append(f"{epoch:>2}/{stop:<2} tr {fmt(tr)} va {fmt(va)}".ljust(30))
        print(f"{run:<26}" + "".join(cells))


def variant_and_pair(run):
    """('base', ('2027', '0')) from base_2027_f0 or base_s2027_f0; None for a row not named that way."""
    m = re.fullmatch(r"(.+)_s?(\d+)_f(\d+)", run)
    return (m.group(1), (m.group(2), m.group(3))) if m else None


def sign_test_p(wins, losses):
    """P(at least `wins` of wins + losses fair coin flips), the one-sided sign test; ties are left out."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0


def print_onsets(rows, base):
    never = 10 ** 6  # later than any epoch
    full_length = max(s["epochs"] for s in rows.values())
    onsets = {}
    for run, s in rows.items():
        key = variant_and_pair(run)
        # A run still going (or stopped early) that has not left chance yet says nothing about its onset.
        if key and (s["onset"] or s["epochs"] == full_length):
            onsets.setdefault(key[0], {})[key[1]] = s["onset"] or never
    if base not in onsets:
        sys.exit(f"tune_summary: no run of variant '{base}' (rows are named VARIANT_SEED_fK)")
    print(f"\nonsets (first epoch with training AUC >= 0.75) against {base}, paired by seed and fold")
    print(f"{'variant':<20}{'runs':>5}{'never':>6}{'median':>7}   {'sooner':>6}{'later':>6}{'tied':>5}{'p':>7}")
    for variant, by_pair in onsets.items():
        values = sorted(by_pair.values())
        median = values[len(values) // 2]
        cells = f"{variant:<20}{len(values):>5}{sum(v == never for v in values):>6}"
        cells += f"{('-' if median == never else median):>7}"
        if variant != base:
            pairs = [(by_pair[k], onsets[base][k]) for k in by_pair if k in onsets[base]]
            sooner = sum(v < b for v, b in pairs)
            later = sum(v > b for v, b in pairs)
            cells += f"   {sooner:>6}{later:>6}{len(pairs) - sooner - later:>5}{sign_test_p(sooner, later):>7.3f}"
        print(cells)


def print_curves(rows):
    by_variant = {}
    for run, s in rows.items():
        key = variant_and_pair(run)
        if key:
            by_variant.setdefault(key[0], []).append(s)

    def mean(values):
        values = [v for v in values if v is not None and v == v]
        return sum(values) / len(values) if values else math.nan

    print("\nmean curves per variant (training / inner-validation AUC at the epoch; late va = mean over epochs 11+)")
    print(f"{'variant':<20}{'runs':>5} " + " ".join(f"tr@{e:<2} va@{e:<2}" for e in CHECKPOINTS) + f" {'late va':>8}")
    for variant, runs in by_variant.items():
        cells = []
        for e in CHECKPOINTS:
            at = [r for r in runs if r["epochs"] >= e]
            cells.append(f"{fmt(mean(r['train_auc'][e - 1] for r in at))} {fmt(mean(r['val_auc'][e - 1] for r in at))}"
                         if at else " " * 9)
        late = mean(mean(r["val_auc"][10:]) for r in runs if r["epochs"] > 10)
        print(f"{variant:<20}{len(runs):>5} " + "   ".join(cells) + f" {fmt(late, 3):>8}")


def print_late(rows, base):
    late = {}
    for run, s in rows.items():
        key = variant_and_pair(run)
        if key and s["epochs"] > 10:
            late.setdefault(key[0], {})[key[1]] = sum(s["val_auc"][10:]) / len(s["val_auc"][10:])
    if base not in late:
        sys.exit(f"tune_summary: no run of variant '{base}' with more than 10 epochs (rows are named VARIANT_SEED_fK)")
    print(f"\nlate inner-validation AUC (mean over epochs 11+) against {base}, paired by seed and fold")
    print(f"{'variant':<20}{'runs':>5}{'mean':>7}{'vs base':>9}{'higher':>7}{'lower':>6}{'tied':>5}{'p':>7}")
    for variant, by_pair in late.items():
        cells = f"{variant:<20}{len(by_pair):>5}{sum(by_pair.values()) / len(by_pair):>7.3f}"
        if variant != base:
            diffs = [round(v - late[base][k], 3) for k, v in by_pair.items() if k in late[base]]
            higher, lower = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            mean_diff = sum(diffs) / len(diffs) if diffs else math.nan
            cells += f"{mean_diff:>+9.3f}{higher:>7}{lower:>6}{len(diffs) - higher - lower:>5}{sign_test_p(higher, lower):>7.3f}"
        print(cells)


def row_name(root, path):
    """The run's folder under RUNS_ROOT, with _fK added unless the folder is already named for its fold."""
    run = os.path.relpath(path, root).split(os.sep)[0]
    fold = os.path.basename(os.path.dirname(path)).split("_")[-1]
    return run if run.endswith(f"_f{fold}") else f"{run}_f{fold}"


def main():
    root = sys.argv[1]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    runs = fold_runs(root)
    rows = {run: summarise(records) for run, _, records in runs}
    header = f"{'run':<26}{'ep':>3}{'onset':>6} " + " ".join(f"tr@{e:<2} va@{e:<2}" for e in CHECKPOINTS)
    header += f" {'best va':>10} {'upd':>8} {'spread':>6} {'loss1':>6} {'gn1':>6} {'s/ep':>5}"
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
              f"{fmt(s['logit_spread_e3']):>6} {fmt(s['loss_e1'], 3):>6} {fmt(s['grad_norm_first_step'], 1):>6} "
              f"{s['seconds_per_epoch']:>5.2f}")
    if out_json:
        with open(out_json, "w") as f:
            json.dump(rows, f)
    if "--onsets" in sys.argv:
        print_onsets(rows, sys.argv[sys.argv.index("--onsets") + 1])
    if "--curves" in sys.argv:
        print_curves(rows)
    if "--late" in sys.argv:
        print_late(rows, sys.argv[sys.argv.index("--late") + 1])
    if "--selection" in sys.argv:
        min_epochs = int(sys.argv[sys.argv.index("--min-epochs") + 1]) if "--min-epochs" in sys.argv else None
        print_selection(runs, [float(t) for t in sys.argv[sys.argv.index("--selection") + 1].split(",")], min_epochs)


if __name__ == "__main__":
    main()
