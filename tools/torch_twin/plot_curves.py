# Side-by-side training curves of a dsmil run and a train.py (PyTorch twin) run of the same folds: training and
# inner-validation AUC per epoch in one PNG, and a table of the selected epochs and the pooled out-of-fold AUC.
"""Usage:
  plot_curves.py --dsmil RUN_DIR --twin TWIN_DIR [--folds 0,1] [--out curves.png]

Both directories have dsmil's layout (apps/report/FORMAT.md): fold_k/ (or repeat_0/fold_k/) with metrics.jsonl,
fold.json and predictions.csv. Per fold the plot shows train AUC (solid) and validation AUC (dashed: the raw model;
dotted: the EMA model) of each side, the selected epoch marked on the chosen model's curve. The table gives per
fold and side the best epoch, the chosen model, the train AUC and the chosen model's validation AUC at that epoch;
then the out-of-fold AUC of each side pooled over the folds' `test` rows of predictions.csv, and twin - dsmil.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_files import auc, fold_dir  # noqa: E402

SIDES = ("dsmil", "twin")
COLOURS = {"dsmil": "tab:blue", "twin": "tab:orange"}


@dataclass
class FoldRecords:
    """One fold of one run: its epochs, fold.json and test predictions."""

    epochs: List[dict]
    info: dict
    test_labels: List[int]
    test_p: List[float]

    def value(self, epoch: int, split: str, key: str = "auc") -> float:
        record = self.epochs[epoch - 1].get(split)
        return float("nan") if not record or record.get(key) is None else record[key]

    def chosen_split(self) -> str:
        return "val_ema" if self.info["chosen_model"] == "ema" else "val"


def load_fold(run_dir: Path, fold: int) -> Optional[FoldRecords]:
    folder = fold_dir(run_dir, fold)
    if not (folder / "fold.json").exists():
        return None
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    with open(folder / "predictions.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["split"] == "test"]
    return FoldRecords(epochs, json.loads((folder / "fold.json").read_text()), [int(r["label"]) for r in rows],
                       [float(r["p_hgg"]) for r in rows])


def folds_present(run_dir: Path) -> List[int]:
    found = set()
    for base in (run_dir, run_dir / "repeat_0"):
        found |= {int(p.name.split("_")[1]) for p in base.glob("fold_*") if (p / "fold.json").exists()}
    return sorted(found)


def plot(runs: dict, folds: List[int], out: Path) -> None:
    fig, axes = plt.subplots(1, len(folds), figsize=(5.5 * len(folds), 4.2), squeeze=False)
    for ax, fold in zip(axes[0], folds):
        for side in SIDES:
            rec = runs[side][fold]
            epochs = np.arange(1, len(rec.epochs) + 1)
            colour = COLOURS[side]
            ax.plot(epochs, [rec.value(e, "train") for e in epochs], "-", color=colour, label=f"{side} train")
            ax.plot(epochs, [rec.value(e, "val") for e in epochs], "--", color=colour, label=f"{side} val (raw)")
            if any("val_ema" in r and r["val_ema"] for r in rec.epochs):
                ax.plot(epochs, [rec.value(e, "val_ema") for e in epochs], ":", color=colour, label=f"{side} val (EMA)")
            best = rec.info["best_epoch"]
            ax.plot([best], [rec.value(best, rec.chosen_split())], "o", color=colour, markersize=8,
                    markerfacecolor="none", markeredgewidth=2)
        ax.set_title(f"fold {fold}: AUC per epoch (o = selected)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("AUC")
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axhline(0.5, color="grey", linewidth=0.6)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def print_table(runs: dict, folds: List[int]) -> None:
    print(f"{'fold':>4} {'side':6} {'best':>4} {'model':5} {'train AUC':>9} {'val AUC':>8} {'epochs':>6}")
    for fold in folds:
        for side in SIDES:
            rec = runs[side][fold]
            best = rec.info["best_epoch"]
            print(f"{fold:>4} {side:6} {best:>4} {rec.info['chosen_model']:5} {rec.value(best, 'train'):9.3f} "
                  f"{rec.value(best, rec.chosen_split()):8.3f} {rec.info['epochs_run']:>6}")
    pooled = {}
    for side in SIDES:
        labels = [l for fold in folds for l in runs[side][fold].test_labels]
        p = [q for fold in folds for q in runs[side][fold].test_p]
        pooled[side] = (auc(np.array(labels), np.array(p)), len(labels))
    folds_text = ",".join(map(str, folds))
    print(f"pooled out-of-fold test AUC (folds {folds_text}): dsmil {pooled['dsmil'][0]:.3f} (n {pooled['dsmil'][1]}), "
          f"twin {pooled['twin'][0]:.3f} (n {pooled['twin'][1]}), twin - dsmil {pooled['twin'][0] - pooled['dsmil'][0]:+.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsmil", required=True, help="dsmil run directory")
    ap.add_argument("--twin", required=True, help="train.py run directory")
    ap.add_argument("--folds", help="comma-separated folds (default: those both runs hold)")
    ap.add_argument("--out", default="curves.png", help="PNG file (default curves.png)")
    args = ap.parse_args(argv)
    dirs = {"dsmil": Path(args.dsmil), "twin": Path(args.twin)}
    folds = [int(f) for f in args.folds.split(",")] if args.folds else \
        sorted(set(folds_present(dirs["dsmil"])) & set(folds_present(dirs["twin"])))
    if not folds:
        print("plot_curves.py: error: no fold is complete (fold.json) in both runs", file=sys.stderr)
        return 2
    runs = {side: {fold: load_fold(dirs[side], fold) for fold in folds} for side in SIDES}
    missing = [f"{side} fold {fold}" for side in SIDES for fold in folds if runs[side][fold] is None]
    if missing:
        print(f"plot_curves.py: error: no fold.json for {', '.join(missing)}", file=sys.stderr)
        return 2
    plot(runs, folds, Path(args.out))
    print_table(runs, folds)
    print(f"curves: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
