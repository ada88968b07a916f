#!/usr/bin/env python3
"""Evaluation-bag probe of tuning runs (scripts/gpu_tune.sh with TUNE_PROBE_INSTANCES): the same trained weights
predicting the inner validation split from bags of different numbers of `fixed` slabs (`dsmil eval --instances`).
Weights are shared, so the comparison is paired: it measures the evaluation bag alone, not training noise. Reads
inner-validation predictions only: tuning never looks at test folds.

Usage:
  eval_probe.py manifest FOLD_DIR COHORT OUT.csv   the fold's inner validation cases as a manifest of COHORT (BraTS
                                                   layout), so that `dsmil eval` predicts them and nothing else
  eval_probe.py summary RUNS_ROOT                  per checkpoint kind and bag size: mean inner-val AUC over runs,
                                                   and against the first bag size the paired differences (mean,
                                                   wins / losses / ties, one-sided sign-test p of "better")
Probe outputs are read from FOLD_DIR/probe/CHECKPOINT_N/predictions.csv. The AUC is tools/torch_twin/run_files.py's
(numpy), the sign test scripts/tune_summary.py's.
"""
import csv
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "torch_twin"))
from run_files import auc  # noqa: E402  (the Mann-Whitney AUC of the twin's tools, ties counted half)
from tune_summary import sign_test_p  # noqa: E402

MODALITIES = ("flair", "t1", "t1ce", "t2")


def manifest(fold_dir, cohort, out_csv):
    fold = int(os.path.basename(os.path.normpath(fold_dir)).split("_")[-1])
    with open(os.path.join(os.path.dirname(os.path.normpath(fold_dir)), "splits.json")) as f:
        splits = json.load(f)["splits"]
    inner_val = next(s["inner_val"] for s in splits if s["fold"] == fold)
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("case_id", "label") + MODALITIES + ("seg",))
        for case in inner_val:
            grade = next(g for g in ("HGG", "LGG") if os.path.isdir(os.path.join(cohort, g, case)))
            folder = os.path.abspath(os.path.join(cohort, grade, case))
            w.writerow([case, grade] + [os.path.join(folder, f"{case}_{m}.nii.gz") for m in MODALITIES + ("seg",)])


def probe_auc(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return auc([int(r["label"]) for r in rows], [float(r["p_hgg"]) for r in rows])


def summary(root):
    table = {}  # (checkpoint, instances) -> {fold_dir: auc}
    for path in glob.glob(os.path.join(root, "**", "probe", "*", "predictions.csv"), recursive=True):
        m = re.fullmatch(r"(.+)_(\d+)", os.path.basename(os.path.dirname(path)))
        if m:
            fold_dir = os.path.dirname(os.path.dirname(os.path.dirname(path)))
            table.setdefault((m.group(1), int(m.group(2))), {})[fold_dir] = probe_auc(path)
    if not table:
        sys.exit(f"eval_probe: no probe predictions under {root}")
    print("evaluation-bag probe: inner-validation AUC of the same weights from bags of n fixed slabs")
    print(f"{'checkpoint':<12}{'n':>5}{'runs':>6}{'mean AUC':>10}   {'vs n0':>8}{'better':>7}{'worse':>6}{'tied':>5}"
          f"{'p':>7}")
    for checkpoint in sorted({c for c, _ in table}):
        sizes = sorted(n for c, n in table if c == checkpoint)
        reference = table[(checkpoint, sizes[0])]
        for n in sizes:
            by_run = table[(checkpoint, n)]
            values = [v for v in by_run.values() if v == v]
            cells = f"{checkpoint:<12}{n:>5}{len(values):>6}{sum(values) / max(len(values), 1):>10.4f}"
            if n != sizes[0]:
                diffs = [by_run[k] - reference[k] for k in by_run if k in reference and by_run[k] == by_run[k]
                         and reference[k] == reference[k]]
                better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
                cells += (f"   {sum(diffs) / max(len(diffs), 1):>+8.4f}{better:>7}{worse:>6}"
                          f"{len(diffs) - better - worse:>5}{sign_test_p(better, worse):>7.3f}")
            print(cells)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "manifest":
        manifest(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "summary":
        summary(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
