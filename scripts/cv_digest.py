#!/usr/bin/env python3
"""The numbers of a finished CV that say whether it learned, one line each, from its cv_summary.json and the
folds' metrics.jsonl: pooled out-of-fold AUC with its 95% CI, and per fold the epochs run, the best epoch and
chosen model, the training AUC at the best epoch, the first epoch whose training AUC reached 0.75, the test
AUC and both class recalls at the calibrated threshold.

Usage: cv_digest.py RUN_DIR [RUN_DIR ...]
"""
import json
import os
import sys


def train_curve(fold_dir):
    with open(os.path.join(fold_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["train"]["auc"] for line in f if line.strip()]


def digest(run_dir):
    with open(os.path.join(run_dir, "cv_summary.json")) as f:
        summary = json.load(f)
    for pooled in summary["pooled"]:
        lo, hi = pooled["auc_ci95"]
        cal = pooled["at_threshold"]["calibrated"]
        print(f"{run_dir}: repeat {pooled['repeat']} pooled out-of-fold AUC {pooled['auc']:.4f} (95% CI {lo:.4f}-{hi:.4f}), "
              f"n {pooled['n']}; at the calibrated thresholds sensitivity (HGG recall) {cal['sensitivity']:.3f}, "
              f"specificity (LGG recall) {cal['specificity']:.3f}")
    for fold in summary["folds"]:
        curve = train_curve(os.path.join(run_dir, fold["dir"]))
        best = fold["best_epoch"]
        onset = next((i + 1 for i, a in enumerate(curve) if a is not None and a >= 0.75), None)
        cal = fold["at_threshold"]["calibrated"]
        print(f"  r{fold['repeat']} f{fold['fold']}: epochs {fold['epochs_run']}, best {best} ({fold['chosen_model']}), "
              f"train AUC at best {curve[best - 1]:.3f} (max {max(a for a in curve if a is not None):.3f}), "
              f"onset {onset or '-'}, test AUC {fold['auc']:.4f}, recall HGG {cal['sensitivity']:.3f} "
              f"LGG {cal['specificity']:.3f} at {cal['threshold']:.3f}")


if __name__ == "__main__":
    for run in sys.argv[1:]:
        digest(run)
