# What the twin's tools read of a run directory without PyTorch: where a fold's files lie, and the AUC its records
# hold (the same definition as dsmil's: Mann-Whitney with ties counted half).
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def fold_dir(run_dir: Path, fold: int) -> Path:
    direct = run_dir / f"fold_{fold}"
    return direct if direct.exists() or not (run_dir / "repeat_0").exists() else run_dir / "repeat_0" / f"fold_{fold}"


def auc(labels: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half, through mid-ranks; NaN for one class."""
    labels = np.asarray(labels)
    p = np.asarray(p, dtype=np.float64)
    m, n = int((labels == 1).sum()), int((labels == 0).sum())
    if m == 0 or n == 0:
        return math.nan
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    i = 0
    while i < len(p):
        j = i
        while j < len(p) and sorted_p[j] == sorted_p[i]:
            j += 1
        ranks[order[i:j]] = 0.5 * (i + 1 + j)
        i = j
    return float((ranks[labels == 1].sum() - m * (m + 1) / 2.0) / (m * n))
