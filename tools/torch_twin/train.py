# PyTorch training twin of `dsmil cv`: the same model (twin.py), loss, optimiser, schedule, EMA, bag sampling,
# augmentation, epoch loop, model selection, early stopping and threshold calibration as apps/train/trainer.cpp,
# reading the cache entries and the splits.json of a dsmil run, and writing fold_k/metrics.jsonl, predictions.csv,
# attention.csv and fold.json in dsmil's format (apps/report/FORMAT.md), so that the two trainings can be compared
# epoch by epoch (plot_curves.py).
"""Usage:
  dsmil preprocess --data COHORT --cache CACHE --grid D,H,W --index index.csv   # once: where each case's entry is
  train.py --run RUN_DIR --index index.csv --folds 0,1 --out OUT_DIR [--device cuda|cpu] [--seed N]
           [--set section.key=value ...]
  train.py --run RUN_DIR --index index.csv --folds 0 --self-check     # consistency checks, PASS/FAIL lines

RUN_DIR is a dsmil run directory: its resolved config.toml gives the recipe (every key must be known here, see
CONFIG_KEYS), its splits.json (repeat 0) the folds. OUT_DIR becomes a run directory of the same layout
(config.toml, splits.json, fold_k/), readable by `dsmil audit` and plot_curves.py.

What matches dsmil and what does not: every distribution (case order, instance sampling, augmentation, dropouts,
initialisation) and every deterministic rule (schedule, clipping, EMA, selection, stopping, calibration, metrics)
follows the C++ named in the comments; the random streams differ (numpy / torch generators), so the two runs agree
in distribution, not bit for bit. Per epoch the records also hold "grad_norm" (mean over the epoch's steps of the
global gradient norm before clipping) and "logit_spread" (population std of the training bags' y1 - y0).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import struct
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import twin  # noqa: E402
from run_files import auc, fold_dir  # noqa: E402

# ----------------------------------------------------------------------------------------------- config

# Every key of dsmil's resolved config (apps/train/config.cpp config_fields). The twin either follows a key
# (RECIPE_KEYS, read into Recipe) or knows why it has no effect on its training (NO_EFFECT_KEYS). Any other key
# is an error naming it: a knob added to dsmil must be taught to the twin, never silently ignored.
RECIPE_KEYS: Dict[str, type] = {
    "data.grid": str,
    "model.depth": int,
    "model.width": int,
    "model.slab_depth": int,
    "model.drop_path": float,
    "model.zero_init_residual": bool,
    "model.zero_init_classifiers": bool,
    "model.pooling": str,
    "model.topk": int,
    "model.attention": str,
    "model.attention_temperature": float,
    "model.feature_dropout": float,
    "model.instance_dropout": float,
    "loss.label_smoothing": float,
    "loss.focal_gamma": float,
    "loss.class_weights": str,
    "loss.stream_weight": float,
    "loss.entropy_weight": float,
    "train.epochs": int,
    "train.min_epochs": int,
    "train.patience": int,
    "train.monitor": str,
    "train.bags_per_step": int,
    "train.instances": int,
    "train.eval_instances": int,
    "train.instance_sampling": str,
    "train.case_sampling": str,
    "train.lr": float,
    "train.weight_decay": float,
    "train.warmup_epochs": float,
    "train.clip_grad": float,
    "train.ema_decay": float,
    "train.tau_start": float,
    "train.tau_end": float,
    "train.augment": bool,
    "train.threshold": str,
    "train.selection_train_auc": float,
    "cv.select_on_test": bool,
    "cv.seed": int,
    "run.precision": str,
    "run.strict_fp32": bool,
    "run.deterministic": bool,
    "run.threads": int,
}
NO_EFFECT_KEYS: Dict[str, Tuple[type, str]] = {
    "run.name": (str, "names the run only"),
    "data.root": (str, "the cases come from --index (dsmil preprocess --index)"),
    "data.cache": (str, "the cases come from --index (dsmil preprocess --index)"),
    "data.on_bad_case": (str, "preprocessing, done by dsmil"),
    "data.resident": (bool, "the twin always keeps the cohort on its device"),
    "train.sync_batchnorm": (bool, "data-parallel dsmil runs only; the twin is one process, like a one-process dsmil"),
    "cv.folds": (int, "the folds come from splits.json"),
    "cv.inner_val": (float, "the inner splits come from splits.json"),
    "cv.repeats": (int, "the twin trains repeat 0 of splits.json"),
    "run.device": (str, "--device chooses the twin's device"),
    "run.conv_fold": (str, "a dsmil convolution lowering (the same convolution)"),
    "run.conv16_kernel": (str, "a dsmil convolution kernel choice (the same convolution)"),
    "run.cuda_graph": (bool, "how dsmil queues its GPU training steps (the same step)"),
    "run.plot_every": (int, "dsmil's plots; see plot_curves.py"),
    "run.checkpoint_seconds": (float, "how often dsmil saves its resume point; the twin does not resume"),
}
# Enumerations and ranges of apps/train/config.cpp validate_config, for the keys the twin follows.
CHOICES: Dict[str, Tuple] = {
    "model.depth": tuple(twin.BLOCKS_PER_STAGE),
    "model.pooling": twin.POOLINGS,
    "model.attention": twin.ATTENTIONS,
    "loss.class_weights": ("none", "balanced"),
    "train.monitor": ("auc", "balanced_accuracy", "min_class_recall", "loss"),
    "train.instance_sampling": ("random", "stratified", "fixed", "all"),
    "train.case_sampling": ("weighted", "balanced", "shuffle"),
    "train.threshold": ("0.5", "youden", "max_f1"),
    "run.precision": ("auto", "fp32", "bf16"),
}
RANGES: Dict[str, Tuple[float, float]] = {
    "model.width": (1, 1024), "model.slab_depth": (1, 64), "model.drop_path": (0, 0.9), "model.topk": (1, 1024),
    "model.attention_temperature": (1e-3, 1e3), "model.feature_dropout": (0, 0.95),
    "model.instance_dropout": (0, 0.95), "loss.label_smoothing": (0, 0.5), "loss.focal_gamma": (0, 10),
    "loss.stream_weight": (0, 1), "loss.entropy_weight": (0, 10), "train.epochs": (1, 100000),
    "train.patience": (1, 100000), "train.bags_per_step": (1, 4096), "train.instances": (1, 4096),
    "train.eval_instances": (1, 4096), "train.lr": (0, 10), "train.weight_decay": (0, 10),
    "train.clip_grad": (0, 1e6), "train.ema_decay": (0, 0.999999), "train.tau_start": (1e-3, 1e3),
    "train.tau_end": (1e-3, 1e3), "train.selection_train_auc": (0, 1), "run.threads": (0, 1024),
}


@dataclass(frozen=True)
class Recipe:
    """The training recipe: the RECIPE_KEYS of a resolved dsmil config. Where a resolved config lacks a key (a run
    of a dsmil older than the key), its default is what that dsmil did: no zero-initialised residuals, fp32,
    selection open from the first epoch."""

    grid: str = "128,128,128"
    depth: int = 18
    width: int = 64
    slab_depth: int = 3
    drop_path: float = 0.1
    zero_init_residual: bool = False
    zero_init_classifiers: bool = False
    pooling: str = "topk"
    topk: int = 4
    attention: str = "gated"
    attention_temperature: float = 1.0
    feature_dropout: float = 0.6
    instance_dropout: float = 0.1
    label_smoothing: float = 0.2
    focal_gamma: float = 2.0
    class_weights: str = "balanced"
    stream_weight: float = 0.5
    entropy_weight: float = 0.0
    epochs: int = 40
    min_epochs: int = 10
    patience: int = 10
    monitor: str = "min_class_recall"
    bags_per_step: int = 2
    instances: int = 16
    eval_instances: int = 16
    instance_sampling: str = "stratified"
    case_sampling: str = "weighted"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    clip_grad: float = 1.0
    ema_decay: float = 0.999
    tau_start: float = 1.0
    tau_end: float = 0.1
    augment: bool = True
    threshold: str = "youden"
    selection_train_auc: float = 0.0
    select_on_test: bool = False
    seed: int = 2026
    precision: str = "fp32"
    strict_fp32: bool = False
    deterministic: bool = False
    threads: int = 0

    @staticmethod
    def from_flat(flat: Dict[str, object]) -> "Recipe":
        return Recipe(**{key.split(".", 1)[1]: value for key, value in flat.items() if key in RECIPE_KEYS})

    def grid_shape(self) -> Tuple[int, int, int]:
        d, h, w = (int(v) for v in self.grid.split(","))
        return d, h, w

    def twin_config(self, class_weight: Tuple[float, float]) -> twin.TwinConfig:
        return twin.TwinConfig(
            depth=self.depth, width=self.width, slab_depth=self.slab_depth, pooling=self.pooling, topk=self.topk,
            attention=self.attention, attention_temperature=self.attention_temperature, tau=self.tau_start,
            label_smoothing=self.label_smoothing, focal_gamma=self.focal_gamma, stream_weight=self.stream_weight,
            class_weight=class_weight, feature_dropout=self.feature_dropout, instance_dropout=self.instance_dropout,
            drop_path=self.drop_path)

    def resolved_precision(self, device: torch.device) -> str:
        """apps/train/config.cpp resolved_precision: `auto` is bf16 on a GPU, fp32 on the CPU."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if device.type == "cuda" else "fp32"


def flatten_toml(table: dict, prefix: str = "") -> Dict[str, object]:
    flat = {}
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten_toml(value, name))
        else:
            flat[name] = value
    return flat


def key_type(key: str) -> type:
    if key in RECIPE_KEYS:
        return RECIPE_KEYS[key]
    if key in NO_EFFECT_KEYS:
        return NO_EFFECT_KEYS[key][0]
    raise ValueError(f"config key '{key}' is unknown to the twin (a dsmil key added after train.py was written?): "
                     f"teach tools/torch_twin/train.py what it does (RECIPE_KEYS or NO_EFFECT_KEYS)")


def typed_value(key: str, value: object) -> object:
    """The value as the key's type, with apps/train/config.cpp assign's rules (a float key takes an integer)."""
    wanted = key_type(key)
    ok = (wanted is bool and isinstance(value, bool)) or \
         (wanted is int and isinstance(value, int) and not isinstance(value, bool)) or \
         (wanted is float and isinstance(value, (int, float)) and not isinstance(value, bool)) or \
         (wanted is str and isinstance(value, str))
    if not ok:
        raise ValueError(f"config key '{key}': wrong type of value ({value!r}, expected {wanted.__name__})")
    return float(value) if wanted is float else value


def parse_override(assignment: str) -> Tuple[str, object]:
    """'section.key=value' with the value in TOML syntax, a bare word being a string (apply_override)."""
    key, eq, text = assignment.partition("=")
    if not eq or not key:
        raise ValueError(f"--set '{assignment}': expected section.key=value")
    try:
        value = tomllib.loads("v = " + text)["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, typed_value(key, value)


def validate_flat(flat: Dict[str, object]) -> None:
    for key, allowed in CHOICES.items():
        if key in flat and flat[key] not in allowed:
            raise ValueError(f"config key '{key}': '{flat[key]}' is not allowed (one of {', '.join(map(str, allowed))})")
    for key, (lo, hi) in RANGES.items():
        if key in flat and not lo <= flat[key] <= hi:
            raise ValueError(f"config key '{key}': {flat[key]} outside [{lo}, {hi}]")
    epochs = flat.get("train.epochs", Recipe.epochs)
    for key in ("train.min_epochs", "train.warmup_epochs"):
        if key in flat and not 0 <= flat[key] <= epochs:
            raise ValueError(f"config key '{key}': {flat[key]} outside [0, {epochs}]")


def load_config(path: Path, overrides: Sequence[str]) -> Dict[str, object]:
    """The run's resolved config.toml, flattened to {"section.key": value}, checked, with --set applied."""
    with open(path, "rb") as f:
        flat = {key: typed_value(key, value) for key, value in flatten_toml(tomllib.load(f)).items()}
    for assignment in overrides:
        key, value = parse_override(assignment)
        flat[key] = value
    validate_flat(flat)
    return flat


def toml_text(flat: Dict[str, object]) -> str:
    """The flat config as TOML (sections of scalars), so that the twin's run directory has a config.toml."""
    sections: Dict[str, List[str]] = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        text = json.dumps(value) if isinstance(value, (str, bool)) else repr(value)
        sections.setdefault(section, []).append(f"{name} = {text}")
    lines = ["# resolved config of a tools/torch_twin/train.py run"]
    for section, entries in sections.items():
        lines += ["", f"[{section}]"] + entries
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- cache entries

ENTRY_MAGIC = b"DSMILPC1"
# Version 1, and 2 (a checksum appended at the end of the header); data/preprocess.cpp adds new header fields at
# the end only, so later versions keep the fields read here.
ENTRY_MIN_VERSION = 1
VALUE_TYPE_FLOAT16 = 1
MODALITIES = 4
# Offsets of the EntryHeader fields used here (data/preprocess.cpp, native little-endian, natural alignment):
# magic[8] @0, version u32 @8, header_bytes u32 @12, key u64[2] @16, depth/height/width/channels i32 @32,
# value_type u32 @48, has_seg u32 @52, brain_z_begin/end i32 @56, box_begin/box_end/source_dims i64[3] @64,
# modality_mean/std f32[4] @136, image/mask/seg/total offsets u64 @168. Fields after them (a checksum, say) are
# neither read nor required absent.
HEADER_PREFIX = struct.Struct("<8sII16x4iII2i")
HEADER_OFFSETS = struct.Struct("<4Q")
HEADER_OFFSETS_AT = 168
HEADER_USED_BYTES = HEADER_OFFSETS_AT + HEADER_OFFSETS.size


@dataclass
class EntryHeader:
    depth: int
    height: int
    width: int
    has_seg: bool
    brain_z_begin: int
    brain_z_end: int
    image_offset: int
    mask_offset: int
    seg_offset: int
    total_bytes: int


def read_entry_header(path: Path) -> EntryHeader:
    with open(path, "rb") as f:
        raw = f.read(HEADER_USED_BYTES)
    if len(raw) < HEADER_USED_BYTES:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than a cache entry header")
    magic, version, header_bytes, d, h, w, channels, value_type, has_seg, z0, z1 = HEADER_PREFIX.unpack_from(raw, 0)
    image_offset, mask_offset, seg_offset, total_bytes = HEADER_OFFSETS.unpack_from(raw, HEADER_OFFSETS_AT)
    problems = []
    if magic != ENTRY_MAGIC:
        problems.append(f"magic {magic!r} is not {ENTRY_MAGIC!r}")
    if version < ENTRY_MIN_VERSION:
        problems.append(f"version {version}")
    if channels != MODALITIES or value_type != VALUE_TYPE_FLOAT16:
        problems.append(f"{channels} channels of value type {value_type}, expected {MODALITIES} float16")
    if header_bytes < HEADER_USED_BYTES or image_offset < header_bytes:
        problems.append(f"header of {header_bytes} bytes, image at {image_offset}")
    voxels = d * h * w
    size = path.stat().st_size
    if min(d, h, w) < 1 or image_offset + MODALITIES * voxels * 2 > size or mask_offset + voxels > size or \
            (has_seg and seg_offset + voxels > size) or total_bytes != size:
        problems.append(f"grid {d}x{h}x{w} and offsets {image_offset}/{mask_offset}/{seg_offset} do not fit "
                        f"{size} bytes (header says {total_bytes})")
    if problems:
        raise ValueError(f"{path}: not a readable dsmil cache entry: " + "; ".join(problems))
    return EntryHeader(d, h, w, bool(has_seg), z0, z1, image_offset, mask_offset, seg_offset, total_bytes)


@dataclass
class CaseData:
    """One preprocessed case as data/preprocess.cpp view_entry sees it."""

    case_id: str
    label: int
    header: EntryHeader
    image: np.ndarray             # [4, D, H, W] float16
    mask: np.ndarray              # [D, H, W] uint8
    slice_has_brain: np.ndarray   # [D] bool
    slice_has_tumour: Optional[np.ndarray]  # [D] bool; None without seg


def read_case(case_id: str, label: int, path: Path) -> CaseData:
    header = read_entry_header(path)
    d, h, w = header.depth, header.height, header.width
    voxels = d * h * w
    image = np.fromfile(path, dtype="<f2", count=MODALITIES * voxels, offset=header.image_offset)
    mask = np.fromfile(path, dtype=np.uint8, count=voxels, offset=header.mask_offset).reshape(d, h, w)
    tumour = None
    if header.has_seg:
        seg = np.fromfile(path, dtype=np.uint8, count=voxels, offset=header.seg_offset).reshape(d, -1)
        tumour = (seg != 0).any(axis=1)
    return CaseData(case_id, label, header, image.reshape(MODALITIES, d, h, w), mask,
                    (mask.reshape(d, -1) != 0).any(axis=1), tumour)


def read_index(path: Path) -> Dict[str, Tuple[int, Path]]:
    """`dsmil preprocess --index` output: case_id,label,entry -> {case_id: (label, entry path)}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"case_id", "label", "entry"} <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns case_id,label,entry (dsmil preprocess --index)")
    index = {}
    for row in rows:
        if row["label"] not in ("0", "1"):
            raise ValueError(f"{path}: case {row['case_id']}: label '{row['label']}' is not 0 (LGG) or 1 (HGG)")
        index[row["case_id"]] = (int(row["label"]), Path(row["entry"]))
    return index


# ----------------------------------------------------------------------------------------------- splits


@dataclass
class FoldPlan:
    """One fold of repeat 0 as indices into the twin's cohort (apps/train/trainer.h FoldPlan)."""

    fold: int
    train: List[int]
    val: List[int]
    test: List[int]


def splits_path(run_dir: Path) -> Path:
    """splits.json lies in the run directory, or in repeat_0/ with --repeats (apps/train/cv.cpp repeat_dir)."""
    for candidate in (run_dir / "splits.json", run_dir / "repeat_0" / "splits.json"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{run_dir}: no splits.json (nor repeat_0/splits.json)")


def read_splits(path: Path, folds: Sequence[int]) -> Tuple[set, Dict[int, Tuple[List[str], List[str], List[str]]]]:
    """(every case id of the splits, {fold: (train ids, inner_val ids, test ids)}). The lists keep the file's
    order, the cohort's (data/splits.cpp writes sorted cohort indices): the epoch's case order indexes the
    training list as in the C++."""
    doc = json.loads(path.read_text())
    splits = {int(s["fold"]): s for s in doc["splits"]}
    chosen = {}
    for fold in folds:
        if fold not in splits:
            raise ValueError(f"{path}: there is no fold {fold} (folds {sorted(splits)})")
        s = splits[fold]
        chosen[fold] = (list(s["train"]), list(s["inner_val"]), list(s["test"]))
    first = splits[min(splits)]
    return set(first["train"] + first["inner_val"] + first["test"]), chosen


# ----------------------------------------------------------------------------------------------- sampling (data/sampling.cpp)


def brain_slab_starts(slice_has_brain: np.ndarray, slab_depth: int) -> np.ndarray:
    """Starts z (ascending) whose slices [z, z + S) hold brain in at least one slice."""
    depth = len(slice_has_brain)
    if slab_depth < 1 or slab_depth > depth:
        return np.zeros(0, dtype=np.int64)
    window = np.convolve(slice_has_brain.astype(np.int64), np.ones(slab_depth, dtype=np.int64), mode="valid")
    return np.flatnonzero(window > 0)


def sample_instances(positions: np.ndarray, n: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """Up to n of `positions`, ascending (sample_instances); n >= count or `all`: every position."""
    count = len(positions)
    if sampling == "all" or n >= count:
        return positions.copy()
    if sampling == "random":
        picked = positions[rng.choice(count, size=n, replace=False)]
    elif sampling == "stratified":
        first, span = int(positions[0]), int(positions[-1]) - int(positions[0]) + 1
        picked = []
        for s in range(n):
            lo, hi = first + s * span // n, first + (s + 1) * span // n
            begin, end = np.searchsorted(positions, [lo, hi], side="left")
            if begin < end:
                picked.append(positions[begin + rng.integers(end - begin)])
        picked = np.asarray(picked, dtype=np.int64)
    elif sampling == "fixed":
        # std::lround rounds halves away from zero; `at` >= 0, so floor(at + 0.5) (Python's round would not do).
        at = [(count - 1) / 2.0] if n == 1 else [float(i) * (count - 1) / (n - 1) for i in range(n)]
        picked = positions[[int(math.floor(a + 0.5)) for a in at]]
    else:
        raise ValueError(f"instance sampling '{sampling}'")
    return np.sort(picked)


def epoch_case_order(labels: np.ndarray, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """Indices into labels, len(labels) of them: `weighted` draws a class uniformly (when both are present), then
    a case of it uniformly, with replacement (WeightedRandomSampler with weights 1/count); `balanced` draws alike
    in pairs of one case of each class (the first's class at random); `shuffle` permutes."""
    n = len(labels)
    if sampling == "shuffle":
        return rng.permutation(n)
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    if len(by_class[0]) and len(by_class[1]):
        classes = rng.integers(2, size=n)
        if sampling == "balanced":
            classes[1::2] = 1 - classes[0:n - 1:2]
    else:
        classes = np.full(n, 0 if len(by_class[0]) else 1)
    order = np.empty(n, dtype=np.int64)
    for c in (0, 1):
        where = np.flatnonzero(classes == c)
        order[where] = by_class[c][rng.integers(len(by_class[c]), size=len(where))] if len(where) else []
    return order


@dataclass
class Augmentation:
    """Each bag's draw (draw_augmentation; all instances of a bag alike): output (y, x) reads source row
    y - shift_y, column u = x - shift_x, or W - 1 - u when flipped; v' = v * scale[c] + offset[c] in the brain,
    0 outside it and where the source lies outside the grid."""

    flip: np.ndarray     # [B] bool
    shift_y: np.ndarray  # [B] int
    shift_x: np.ndarray  # [B] int
    scale: np.ndarray    # [B, 4] float32
    offset: np.ndarray   # [B, 4] float32

    @staticmethod
    def identity(bags: int) -> "Augmentation":
        return Augmentation(np.zeros(bags, bool), np.zeros(bags, np.int64), np.zeros(bags, np.int64),
                            np.ones((bags, MODALITIES), np.float32), np.zeros((bags, MODALITIES), np.float32))

    @staticmethod
    def draw(bags: int, max_shift: int, rng: np.random.Generator) -> "Augmentation":
        """AugmentParams defaults: flip 0.5, shift uniform in [-max_shift, max_shift], scale U(0.9, 1.1), offset
        U(-0.1, 0.1) per modality."""
        return Augmentation(rng.random(bags) < 0.5, rng.integers(2 * max_shift + 1, size=bags) - max_shift,
                            rng.integers(2 * max_shift + 1, size=bags) - max_shift,
                            rng.uniform(0.9, 1.1, (bags, MODALITIES)).astype(np.float32),
                            rng.uniform(-0.1, 0.1, (bags, MODALITIES)).astype(np.float32))


def max_shift_of(grid_width: int) -> int:
    """apps/train/trainer.cpp train_spec: shifts up to 1/16 of the width (8 voxels at 128), at least 1."""
    return max(1, grid_width // 16)


# ----------------------------------------------------------------------------------------------- resident cohort


class ResidentCohort:
    """The cases of the folds on the device: image [N, D, H, W, 4] float16 (channels last: one voxel's four
    modalities side by side, as the model's input wants them) and brain mask [N, D, H, W] bool; bags are gathered
    there by one indexing op per batch (ops::gather_bags' rule, tensor/cpu/gather_bags.cpp)."""

    def __init__(self, cases: List[CaseData], device: torch.device):
        d, h, w = cases[0].header.depth, cases[0].header.height, cases[0].header.width
        self.grid = (d, h, w)
        self.device = device
        self.ids = [c.case_id for c in cases]
        self.labels = np.array([c.label for c in cases], dtype=np.int64)
        self.slice_has_brain = [c.slice_has_brain for c in cases]
        self.slice_has_tumour = [c.slice_has_tumour for c in cases]
        self.image = torch.empty((len(cases), d, h, w, MODALITIES), dtype=torch.float16, device=device)
        self.mask = torch.empty((len(cases), d, h, w), dtype=torch.bool, device=device)
        for i, c in enumerate(cases):
            if (c.header.depth, c.header.height, c.header.width) != self.grid:
                raise ValueError(f"case {c.case_id}: grid {c.header.depth}x{c.header.height}x{c.header.width}, "
                                 f"the cohort's is {d}x{h}x{w}")
            self.image[i] = torch.from_numpy(c.image).to(device).permute(1, 2, 3, 0)
            self.mask[i] = torch.from_numpy(c.mask).to(device) != 0
        self.positions: Dict[int, List[np.ndarray]] = {}

    def slab_starts(self, case: int, slab_depth: int) -> np.ndarray:
        if slab_depth not in self.positions:
            self.positions[slab_depth] = [brain_slab_starts(b, slab_depth) for b in self.slice_has_brain]
        starts = self.positions[slab_depth][case]
        if len(starts) == 0:
            raise ValueError(f"case {self.ids[case]}: no slab of {slab_depth} slices holds brain")
        return starts

    def upload(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def gather(self, cases: Sequence[int], starts: Sequence[np.ndarray], n: int, slab_depth: int,
               aug: Augmentation) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B*n, S, H, W, 4] float32 (row b*n + i = instance i of bag b; rows past a bag's slabs zero) and the
        instance mask [B, n] bool (apps/train/batches.cpp make_batch)."""
        d, h, w = self.grid
        bags = len(cases)
        counts = [len(s) for s in starts]
        if max(counts) > n:
            raise ValueError(f"a bag of {max(counts)} slabs, more than {n} instances")
        row_bag = np.repeat(np.arange(bags), counts)
        row_pos = np.concatenate([b * n + np.arange(c) for b, c in enumerate(counts)])
        ints = np.stack([np.asarray(cases, np.int64)[row_bag], np.concatenate(starts).astype(np.int64), row_bag,
                         row_pos])
        per_bag = np.stack([aug.flip.astype(np.int64), aug.shift_y, aug.shift_x])
        floats = np.concatenate([aug.scale, aug.offset], axis=1).astype(np.float32)
        mask = np.zeros((bags, n), dtype=bool)
        mask[row_bag, row_pos - row_bag * n] = True
        ints_d, per_bag_d, floats_d = self.upload(ints), self.upload(per_bag), self.upload(floats)
        case, z0, bag, pos = ints_d
        flip, shift_y, shift_x = per_bag_d[:, bag]
        dev = self.device
        z = z0[:, None] + torch.arange(slab_depth, device=dev)[None, :]
        yy = torch.arange(h, device=dev)[None, :] - shift_y[:, None]
        u = torch.arange(w, device=dev)[None, :] - shift_x[:, None]
        xx = torch.where(flip[:, None] != 0, w - 1 - u, u)
        inside = ((yy >= 0) & (yy < h))[:, None, :, None] & ((xx >= 0) & (xx < w))[:, None, None, :]
        flat = (((case[:, None] * d + z) * h)[:, :, None] + yy.clamp(0, h - 1)[:, None, :]) * w
        flat = flat[..., None] + xx.clamp(0, w - 1)[:, None, None, :]
        brain = self.mask.view(-1)[flat] & inside
        scale = floats_d[bag, :MODALITIES][:, None, None, None, :]
        offset = floats_d[bag, MODALITIES:][:, None, None, None, :]
        values = self.image.view(-1, MODALITIES)[flat].float() * scale + offset
        x = torch.zeros((bags * n, slab_depth, h, w, MODALITIES), dtype=torch.float32, device=dev)
        x[pos] = torch.where(brain[..., None], values, torch.zeros((), device=dev))
        return x, self.upload(mask)


def reference_gather(case: CaseData, starts: np.ndarray, slab_depth: int, flip: bool, shift_y: int, shift_x: int,
                     scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """ops::gather_bags written out voxel row by voxel row in numpy, independent of ResidentCohort.gather
    (--self-check compares the two)."""
    _, d, h, w = case.image.shape
    out = np.zeros((len(starts), slab_depth, h, w, MODALITIES), dtype=np.float32)
    for i, start in enumerate(starts):
        for s in range(slab_depth):
            z = start + s
            for y in range(h):
                sy = y - shift_y
                if not 0 <= sy < h:
                    continue
                u = np.arange(w) - shift_x
                sx = w - 1 - u if flip else u
                ok = (sx >= 0) & (sx < w)
                sxc = np.clip(sx, 0, w - 1)
                brain = (case.mask[z, sy, sxc] != 0) & ok
                v = case.image[:, z, sy, sxc].astype(np.float32).T * scale[None, :] + offset[None, :]
                out[i, s, y] = np.where(brain[:, None], v, np.float32(0))
    return out


# ----------------------------------------------------------------------------------------------- metrics (apps/report/metrics.cpp)


def confusion_at(labels: np.ndarray, p: np.ndarray, threshold: float) -> Tuple[int, int, int, int]:
    """(tn, fp, fn, tp); HGG predicted when p >= threshold."""
    labels = np.asarray(labels)
    predicted = np.asarray(p) >= threshold
    return (int(((labels == 0) & ~predicted).sum()), int(((labels == 0) & predicted).sum()),
            int(((labels == 1) & ~predicted).sum()), int(((labels == 1) & predicted).sum()))


def ratio(num: float, den: float) -> float:
    return math.nan if den == 0 else num / den


def or_null(value: float):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def split_record(labels: np.ndarray, p: np.ndarray, loss: float) -> dict:
    """A metrics.jsonl split record (apps/report/run_dir.cpp split_record_json): threshold metrics at 0.5."""
    tn, fp, fn, tp = confusion_at(labels, p, 0.5)
    sensitivity, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {"loss": or_null(loss), "auc": or_null(auc(labels, p)), "accuracy": or_null(ratio(tp + tn, tn + fp + fn + tp)),
            "balanced_accuracy": or_null(0.5 * (sensitivity + specificity)),
            "f1": or_null(ratio(2.0 * tp, 2.0 * tp + fp + fn)), "recall_lgg": or_null(specificity),
            "recall_hgg": or_null(sensitivity), "confusion": [[tn, fp], [fn, tp]]}


def choose_threshold(labels: np.ndarray, p: np.ndarray, method: str) -> float:
    """0.5, or the candidate (half the smallest p, midpoints of consecutive distinct p) maximising Youden's J or
    F1 (HGG positive), ties to the candidate closest to 0.5."""
    if method == "0.5":
        return 0.5
    distinct = np.unique(np.asarray(p, dtype=np.float64))
    candidates = [0.5 * distinct[0]] + [0.5 * (a + b) for a, b in zip(distinct[:-1], distinct[1:])]
    best_t, best_score = candidates[0], -math.inf
    for t in candidates:
        tn, fp, fn, tp = confusion_at(labels, p, t)
        score = ratio(tp, tp + fn) + ratio(tn, tn + fp) - 1.0 if method == "youden" else ratio(2.0 * tp, 2.0 * tp + fp + fn)
        if score > best_score or (score == best_score and abs(t - 0.5) < abs(best_t - 0.5)):
            best_t, best_score = t, score
    return float(best_t)


def softmax_hgg(y: np.ndarray) -> np.ndarray:
    """p(HGG) in double from float32 logits [B, 2] (trainer.cpp softmax_hgg)."""
    y = np.asarray(y, dtype=np.float32).astype(np.float64)
    return 1.0 / (1.0 + np.exp(y[:, 0] - y[:, 1]))


def spread(values: np.ndarray) -> float:
    """Standard deviation (n - 1), 0 for fewer than two values (apps/train/health.cpp spread)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def cpp_min(a: float, b: float) -> float:
    """std::min(a, b) = (b < a) ? b : a, NaN included: min(x, NaN) is x, min(NaN, x) is NaN."""
    return b if b < a else a


def monitor_value(monitor: str, record: dict) -> float:
    get = lambda key: math.nan if record[key] is None else record[key]  # noqa: E731
    if monitor == "min_class_recall":
        return cpp_min(get("recall_lgg"), get("recall_hgg"))
    return get(monitor)


@dataclass
class Candidate:
    """trainer.cpp Candidate: the monitor decides (loss negated, undefined last), AUC breaks ties."""

    value: float = math.nan
    score: float = -math.inf
    auc: float = -math.inf
    epoch: int = 0

    @staticmethod
    def of(monitor: str, record: dict, epoch: int) -> "Candidate":
        value = monitor_value(monitor, record)
        score = -math.inf if math.isnan(value) else (-value if monitor == "loss" else value)
        return Candidate(value, score, -math.inf if record["auc"] is None else record["auc"], epoch)

    def beaten_by(self, other: "Candidate") -> bool:
        return other.score > self.score or (other.score == self.score and other.auc > self.auc)


# ----------------------------------------------------------------------------------------------- schedule, EMA


def tau_at(recipe: Recipe, epoch: int) -> float:
    """trainer.cpp soft_pooling_tau: tau_start annealed geometrically to tau_end over epochs 0 .. epochs - 1."""
    if recipe.epochs <= 1:
        return recipe.tau_start
    return recipe.tau_start * (recipe.tau_end / recipe.tau_start) ** (epoch / (recipe.epochs - 1))


def warmup_cosine_lr(lr: float, step: int, warmup: int, total: int) -> float:
    """nn/optim.cpp warmup_cosine_lr (min_factor 0): lr (step + 1) / warmup over the warm-up, then cosine to 0 at
    `total` steps."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class Ema:
    """nn/optim.cpp Ema: theta_ema <- d theta_ema + (1 - d) theta, d = min(decay, (1 + k) / (10 + k)), k updates so
    far, over parameters and batch-norm statistics, kept in a model of its own (the one evaluated)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        self.sources = self.tensors(model)
        self.targets = self.tensors(self.model)
        self.decay = decay
        self.updates = 0

    @staticmethod
    def tensors(model: torch.nn.Module) -> List[torch.Tensor]:
        return [p.detach() for _, p in twin.cpp_parameters(model)] + [b for _, b in twin.cpp_buffers(model)]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        torch._foreach_mul_(self.targets, d)
        torch._foreach_add_(self.targets, self.sources, alpha=1.0 - d)
        self.updates += 1


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """nn/optim.cpp AdamW (beta 0.9/0.999, eps 1e-8, decoupled decay): decay on conv and linear weights only,
    never on biases or batch-norm parameters (nn/layers.cpp register_parameter flags)."""
    flags = twin.weight_decay_flags(model)
    named = twin.cpp_parameters(model)
    groups = [{"params": [p for n, p in named if flags[n]], "weight_decay": recipe.weight_decay},
              {"params": [p for n, p in named if not flags[n]], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)


def attention_entropy(a: torch.Tensor) -> torch.Tensor:
    """Mean over bags of -sum_i a_i log a_i with 0 log 0 = 0 and a zero gradient there (mil/dual_stream.cpp
    mean_attention_entropy)."""
    safe = torch.where(a > 0, a, torch.ones_like(a))
    return -(a * torch.log(safe)).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------------- fold training


@dataclass
class Predictions:
    """One model's evaluation bags (trainer.cpp CasePrediction), one entry per case."""

    cases: List[int] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    p_hgg: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    starts: List[np.ndarray] = field(default_factory=list)
    attention: List[np.ndarray] = field(default_factory=list)
    selection: List[np.ndarray] = field(default_factory=list)
    margins: List[np.ndarray] = field(default_factory=list)
    entropy: List[float] = field(default_factory=list)
    top1: List[float] = field(default_factory=list)
    neff: List[float] = field(default_factory=list)


class FoldRun:
    """apps/train/trainer.cpp FoldRun: trains one fold, validates the raw and the EMA model every epoch, keeps the
    best of each, stops early, calibrates the threshold on the inner validation cases and predicts the test
    fold once; writes the fold's files into `out`."""

    def __init__(self, recipe: Recipe, cohort: ResidentCohort, plan: FoldPlan, device: torch.device, seed: int,
                 out: Path, eval_bags: int):
        self.r = recipe
        self.cohort = cohort
        self.plan = plan
        self.device = device
        self.out = out
        self.eval_bags = eval_bags
        self.bf16 = recipe.resolved_precision(device) == "bf16"
        streams = np.random.SeedSequence([seed, 0, plan.fold]).spawn(3)
        self.rng = np.random.default_rng(streams[0])
        init_seed, mask_seed = (int(s.generate_state(1, np.uint64)[0] >> np.uint64(1)) for s in streams[1:])
        torch.manual_seed(mask_seed)

        train_labels = cohort.labels[plan.train]
        counts = [int((train_labels == c).sum()) for c in (0, 1)]
        # alpha_c = N / (2 N_c) from the training fold (trainer.cpp FoldRun); 1 for `none` or an absent class.
        self.class_weight = tuple(len(plan.train) / (2.0 * counts[c]) if recipe.class_weights == "balanced" and counts[c]
                                  else 1.0 for c in (0, 1))
        self.cfg = recipe.twin_config(self.class_weight)
        self.class_weight_t = torch.tensor(self.class_weight, dtype=torch.float32, device=device)
        self.model = twin.DualStreamMIL(self.cfg)
        twin.init_like_cpp(self.model, torch.Generator().manual_seed(init_seed))
        if recipe.zero_init_residual:
            self.zero_init_residual()
        if recipe.zero_init_classifiers:
            self.zero_init_classifiers()
        self.model.to(device)
        if device.type == "cuda":
            self.model.to(memory_format=torch.channels_last_3d)
        self.optimizer = make_optimizer(self.model, recipe)
        self.params = [p for _, p in twin.cpp_parameters(self.model)]
        self.ema = Ema(self.model, recipe.ema_decay) if recipe.ema_decay > 0 else None
        self.steps_per_epoch = -(-len(plan.train) // recipe.bags_per_step)
        self.best_raw, self.best_ema = Candidate(), Candidate()
        self.best_states: Dict[str, Dict[str, torch.Tensor]] = {}
        self.learning_since = 0  # the first epoch whose training AUC reached selection_train_auc (0: none yet)
        self.stopped_early = False
        self.epochs_run = 0

    @torch.no_grad()
    def zero_init_residual(self) -> None:
        """nn/resnet3d.cpp BasicBlock: each block's bn2 scale starts at 0 (the downsample BN keeps 1)."""
        for stage in range(1, 5):
            for block in getattr(self.model.encoder, f"layer{stage}"):
                block.bn2.weight.zero_()

    @torch.no_grad()
    def zero_init_classifiers(self) -> None:
        """mil/dual_stream.cpp DualStreamHead: both classifiers start at 0, after every parameter drew its init."""
        for classifier in (self.model.head.instance_classifier, self.model.head.bag_classifier):
            classifier.weight.zero_()
            classifier.bias.zero_()

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        x = twin.from_channels_last(x)
        return x if self.device.type == "cuda" else x.contiguous()

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def selection_set(self) -> List[int]:
        return self.plan.test if self.r.select_on_test else self.plan.val

    # ------------------------------------------------------------------ epoch

    def train_epoch(self, epoch: int) -> dict:
        r, plan = self.r, self.plan
        self.model.train()
        order = epoch_case_order(self.cohort.labels[plan.train], r.case_sampling, self.rng)
        tau = tau_at(r, epoch)
        total_steps = self.steps_per_epoch * r.epochs
        warmup = int(r.warmup_epochs * self.steps_per_epoch)
        max_shift = max_shift_of(self.cohort.grid[2])
        losses, logits, norms, bag_counts = [], [], [], []
        seen_labels: List[int] = []
        batch_seconds, lr = 0.0, 0.0
        for step in range(self.steps_per_epoch):
            t_batch = time.perf_counter()
            cases = [plan.train[j] for j in order[step * r.bags_per_step:(step + 1) * r.bags_per_step]]
            starts = [sample_instances(self.cohort.slab_starts(c, r.slab_depth), r.instances, r.instance_sampling,
                                       self.rng)[:r.instances] for c in cases]
            aug = Augmentation.draw(len(cases), max_shift, self.rng) if r.augment else Augmentation.identity(len(cases))
            x, mask = self.cohort.gather(cases, starts, r.instances, r.slab_depth, aug)
            target = self.cohort.upload(self.cohort.labels[cases])
            batch_seconds += time.perf_counter() - t_batch
            with self.autocast():
                out = self.model(self.model_input(x), mask, tau)
            loss = twin.mil_loss(out, target, self.cfg, self.class_weight_t)
            if r.entropy_weight > 0:
                loss = loss - r.entropy_weight * attention_entropy(out["attention"])
            loss.backward()
            # The norm before clipping is recorded whether or not clipping is on (an infinite bound never clips);
            # torch clips by max / (norm + 1e-6) like nn/optim.cpp.
            norms.append(torch.nn.utils.clip_grad_norm_(self.params, r.clip_grad if r.clip_grad > 0 else math.inf))
            lr = warmup_cosine_lr(r.lr, epoch * self.steps_per_epoch + step, warmup, total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema:
                self.ema.update()
            losses.append(loss.detach())
            logits.append(out["y"].detach().float())
            bag_counts.append(len(cases))
            seen_labels += [int(self.cohort.labels[c]) for c in cases]
        step_losses = torch.stack(losses).double().cpu().numpy()
        if not np.isfinite(step_losses).all():
            bad = int(np.flatnonzero(~np.isfinite(step_losses))[0])
            raise FloatingPointError(f"fold {plan.fold} epoch {epoch + 1} step {bad}: the loss is {step_losses[bad]} (diverged)")
        y = torch.cat(logits).cpu().numpy()
        grad_norms = torch.stack(norms).double().cpu().numpy()
        margins = y[:, 1].astype(np.float64) - y[:, 0]
        clipped = int((grad_norms > r.clip_grad).sum()) if r.clip_grad > 0 else 0
        return {"epoch": epoch + 1, "lr": lr, "tau": tau, "batch_assembly_s": batch_seconds,
                "train": split_record(np.array(seen_labels), softmax_hgg(y),
                                      float((step_losses * np.array(bag_counts)).sum() / max(len(seen_labels), 1))),
                "grad_norm": float(grad_norms.mean()), "grad_norm_first_step": float(grad_norms[0]),
                "logit_spread": spread(margins),
                # The figures of apps/train/health.cpp EpochHealth::record that the twin measures alike.
                "health": {"grad_norm": {"mean": float(grad_norms.mean()),
                                         "median": float(np.sort(grad_norms)[len(grad_norms) // 2]),
                                         "max": float(grad_norms.max()), "clipped_fraction": clipped / len(grad_norms)},
                           "logit_spread": spread(margins)}}

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, cases: List[int], tau: float) -> Predictions:
        """trainer.cpp predict_cases: eval mode, `fixed` sampling of eval_instances slabs, no augmentation; each
        bag's own loss with unit weights. Chunks of eval_bags (batch norm uses running statistics: the chunk size
        changes nothing but speed)."""
        r = self.r
        was_training = model.training
        model.eval()
        preds = Predictions()
        for first in range(0, len(cases), self.eval_bags):
            chunk = cases[first:first + self.eval_bags]
            starts = [sample_instances(self.cohort.slab_starts(c, r.slab_depth), r.eval_instances, "fixed", self.rng)
                      for c in chunk]
            x, mask = self.cohort.gather(chunk, starts, r.eval_instances, r.slab_depth, Augmentation.identity(len(chunk)))
            target = self.cohort.upload(self.cohort.labels[chunk])
            with self.autocast():
                out = model(self.model_input(x), mask, tau)
            l1 = twin.focal_loss_per_sample(out["y1"], target, r.label_smoothing, r.focal_gamma)
            l2 = twin.focal_loss_per_sample(out["y2"], target, r.label_smoothing, r.focal_gamma)
            bag_loss = (r.stream_weight * l1 + (1.0 - r.stream_weight) * l2).double().cpu().numpy()
            a = out["attention"].float()
            safe = torch.where(a > 0, a, torch.ones_like(a))
            stats = torch.stack([-(a * torch.log(safe)).sum(1), a.max(1).values, 1.0 / (a * a).sum(1)], 1).cpu().numpy()
            y = out["y"].float().cpu().numpy()
            a, s, z = a.cpu().numpy(), out["selection"].float().cpu().numpy(), out["margins"].float().cpu().numpy()
            p = softmax_hgg(y)
            for b, case in enumerate(chunk):
                valid = len(starts[b])
                preds.cases.append(case)
                preds.labels.append(int(self.cohort.labels[case]))
                preds.p_hgg.append(float(p[b]))
                preds.loss.append(float(bag_loss[b]))
                preds.starts.append(starts[b])
                preds.attention.append(a[b, :valid])
                preds.selection.append(s[b, :valid])
                preds.margins.append(z[b, :valid])
                preds.entropy.append(float(stats[b, 0]))
                preds.top1.append(float(stats[b, 1]))
                preds.neff.append(float(stats[b, 2]))
        model.train(was_training)
        return preds

    def metrics_of(self, preds: Predictions) -> dict:
        """Validation loss weighted by the fold's class weights, like the training loss (trainer.cpp metrics_of)."""
        w = np.array([self.class_weight[label] for label in preds.labels])
        loss = float((w * np.array(preds.loss)).sum() / w.sum()) if w.sum() > 0 else math.nan
        return split_record(np.array(preds.labels), np.array(preds.p_hgg), loss)

    def attention_diagnostics(self, preds: Predictions) -> Optional[dict]:
        """trainer.cpp attention_diagnostics over the raw model's validation bags."""
        if not preds.cases:
            return None
        n = len(preds.cases)
        confidence, tumour, with_seg = [], 0, 0
        for case, start, sel, z in zip(preds.cases, preds.starts, preds.selection, preds.margins):
            critical = int(np.argmax(sel))
            confidence.append(1.0 / (1.0 + math.exp(-abs(float(z[critical])))))
            flags = self.cohort.slice_has_tumour[case]
            if flags is not None:
                with_seg += 1
                tumour += bool(flags[start[critical]:start[critical] + self.r.slab_depth].any())
        confidence.sort()
        quantile = lambda q: confidence[int(q * (len(confidence) - 1) + 0.5)]  # noqa: E731
        entropy_norm = [e / math.log(len(a)) if len(a) > 1 else 0.0 for e, a in zip(preds.entropy, preds.attention)]
        return {"entropy": sum(preds.entropy) / n, "entropy_norm": sum(entropy_norm) / n, "top1": sum(preds.top1) / n,
                "neff": sum(preds.neff) / n,
                "selection_confidence": {"mean": sum(confidence) / n, "p10": quantile(0.1), "p50": quantile(0.5),
                                         "p90": quantile(0.9)},
                "critical_tumour_share": tumour / with_seg if with_seg else None}

    # ------------------------------------------------------------------ selection, stopping

    def snapshot(self, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def track_best(self, epoch: int, record: dict) -> None:
        raw = Candidate.of(self.r.monitor, record["val"], epoch + 1)
        if self.best_raw.beaten_by(raw):
            self.best_raw = raw
            self.best_states["raw"] = self.snapshot(self.model)
        if self.ema:
            ema = Candidate.of(self.r.monitor, record["val_ema"], epoch + 1)
            if self.best_ema.beaten_by(ema):
                self.best_ema = ema
                self.best_states["ema"] = self.snapshot(self.ema.model)

    def open_selection(self, epoch: int, record: dict) -> None:
        """trainer.cpp validate_and_save: model selection starts at the first epoch whose training AUC is not below
        train.selection_train_auc (a NaN AUC opens it too, as `!(auc < bound)` in the C++); the epochs before no
        longer compete. A model that never gets there is selected over all its epochs and runs them all."""
        train_auc = math.nan if record["train"]["auc"] is None else record["train"]["auc"]
        if self.learning_since == 0 and not train_auc < self.r.selection_train_auc:
            self.learning_since = epoch + 1
            self.best_raw, self.best_ema = Candidate(), Candidate()
            self.best_states.clear()
        record["selection_open"] = self.learning_since > 0

    def best_is_ema(self) -> bool:
        return self.ema is not None and self.best_raw.beaten_by(self.best_ema)

    def best_overall(self) -> Candidate:
        return self.best_ema if self.best_is_ema() else self.best_raw

    def run(self) -> None:
        r = self.r
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = open(self.out / "metrics.jsonl", "w")
        for epoch in range(r.epochs):
            t0 = time.perf_counter()
            record = self.train_epoch(epoch)
            train_seconds = time.perf_counter() - t0
            val = self.predict(self.model, self.selection_set(), tau_at(r, epoch))
            record["val"] = self.metrics_of(val)
            if self.ema:
                record["val_ema"] = self.metrics_of(self.predict(self.ema.model, self.selection_set(), tau_at(r, epoch)))
            eval_bags = len(self.selection_set()) * (2 if self.ema else 1)
            record["eval_bags_per_s"] = eval_bags / max(time.perf_counter() - t0 - train_seconds, 1e-9)
            record["attention"] = self.attention_diagnostics(val)
            record["health"]["val_logit_spread"] = spread(np.log(np.clip(val.p_hgg, 1e-12, 1 - 1e-12) /
                                                                (1 - np.clip(val.p_hgg, 1e-12, 1 - 1e-12))))
            self.open_selection(epoch, record)
            record["throughput_bags_per_s"] = len(self.plan.train) / max(train_seconds, 1e-9)
            record["epoch_time_s"] = time.perf_counter() - t0
            self.track_best(epoch, record)
            metrics.write(json.dumps(record, sort_keys=True) + "\n")
            metrics.flush()
            self.epochs_run = epoch + 1
            best = self.best_overall()
            fmt = lambda v, digits=3: "nan" if v is None else f"{v:.{digits}f}"  # noqa: E731
            ema_auc = f" (ema {fmt(record['val_ema']['auc'])})" if self.ema else ""
            print(f"fold {self.plan.fold} epoch {epoch + 1:3d}/{r.epochs} loss {record['train']['loss']:.4f} "
                  f"train_auc {fmt(record['train']['auc'])} val_auc {fmt(record['val']['auc'])}{ema_auc} "
                  f"val_loss {fmt(record['val']['loss'], 4)} lr {record['lr']:.2e} "
                  f"grad {record['grad_norm']:.3f} | {r.monitor} best {best.value:.3f} "
                  f"({'ema' if self.best_is_ema() else 'raw'} @{best.epoch}) | {record['epoch_time_s']:.1f}s", flush=True)
            # trainer.cpp validate_and_save: stop when the best (raw or EMA) is `patience` epochs old, once selection
            # is open, not before min_epochs, never at the last epoch (stopped_early stays false there).
            last = epoch + 1 == r.epochs
            self.stopped_early = self.learning_since > 0 and not last and epoch + 1 >= r.min_epochs and \
                epoch + 1 - best.epoch >= r.patience
            if self.stopped_early:
                break
        metrics.close()
        self.finish()

    # ------------------------------------------------------------------ end of the fold

    def finish(self) -> None:
        use_ema = self.best_is_ema()
        best = self.best_overall()
        chosen = "ema" if use_ema else "raw"
        if chosen not in self.best_states:
            raise RuntimeError(f"fold {self.plan.fold}: no epoch gave a defined {self.r.monitor} or AUC on the "
                               f"selection cases, so there is no best model (dsmil would find no {chosen} checkpoint)")
        model = self.ema.model if use_ema else self.model
        model.load_state_dict(self.best_states[chosen])
        tau = tau_at(self.r, best.epoch - 1)
        calibration = self.predict(model, self.selection_set(), tau)
        labels, p = np.array(calibration.labels), np.array(calibration.p_hgg)
        can_calibrate = len(set(calibration.labels)) == 2
        method = self.r.threshold if can_calibrate else "0.5"
        threshold = choose_threshold(labels, p, method)
        test = calibration if self.r.select_on_test else self.predict(model, self.plan.test, tau)

        rows = [(self.cohort.ids[c], l, q, "test") for c, l, q in zip(test.cases, test.labels, test.p_hgg)]
        if not self.r.select_on_test:
            rows += [(self.cohort.ids[c], l, q, "val") for c, l, q in zip(calibration.cases, calibration.labels,
                                                                          calibration.p_hgg)]
        with open(self.out / "predictions.csv", "w") as f:
            f.write("case_id,label,p_hgg,pred_05,threshold,pred_thr,split,model\n")
            for case_id, label, q, split in rows:
                f.write(f"{case_id},{label},{q:.17g},{int(q >= 0.5)},{threshold:.17g},{int(q >= threshold)},"
                        f"{split},{chosen}\n")
        with open(self.out / "attention.csv", "w") as f:
            f.write("case_id,instance,slab_start,attention,critical\n")
            for case, starts, a, s in zip(test.cases, test.starts, test.attention, test.selection):
                critical = int(np.argmax(s))
                for i, start in enumerate(starts):
                    f.write(f"{self.cohort.ids[case]},{i},{start},{a[i]:.9g},{int(s[i] > 0 and i == critical)}\n")
        info = {"fold": self.plan.fold, "repeat": 0, "best_epoch": best.epoch, "chosen_model": chosen,
                "monitor": self.r.monitor, "monitor_value": or_null(best.value), "threshold_method": method,
                "threshold": threshold, "stopped_early": self.stopped_early, "epochs_run": self.epochs_run,
                "protocol": "select_on_test" if self.r.select_on_test else "nested", "n_train": len(self.plan.train),
                "n_val": len(self.plan.val), "n_test": len(self.plan.test)}
        (self.out / "fold.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        test_auc = auc(np.array(test.labels), np.array(test.p_hgg))
        print(f"fold {self.plan.fold} done: best epoch {best.epoch} ({chosen} model), threshold {threshold:.3f} "
              f"({method}), test AUC {test_auc:.3f} on {len(test.cases)} cases", flush=True)


# ----------------------------------------------------------------------------------------------- setup


@dataclass
class Setup:
    flat: Dict[str, object]
    recipe: Recipe
    cohort: ResidentCohort
    cases: List[CaseData]
    plans: List[FoldPlan]
    device: torch.device


def prepare(args) -> Setup:
    run_dir = Path(args.run)
    flat = load_config(run_dir / "config.toml", args.set)
    recipe = Recipe.from_flat(flat)
    device = torch.device(args.device)
    if recipe.resolved_precision(device) == "bf16" and device.type != "cuda":
        raise ValueError("run.precision = bf16 needs a CUDA device (dsmil's CPU backend computes in fp32 too)")
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    if device.type == "cuda":
        twin.set_tf32(not recipe.strict_fp32)
        torch.backends.cudnn.benchmark = not recipe.deterministic
        torch.backends.cudnn.deterministic = recipe.deterministic

    folds = [int(f) for f in args.folds.split(",")]
    all_ids, fold_ids = read_splits(splits_path(run_dir), folds)
    index = read_index(Path(args.index))
    missing = [i for i in all_ids if i not in index]
    if missing:
        raise ValueError(f"{args.index}: {len(missing)} cases of splits.json are not in the index, e.g. {missing[:3]}")
    wanted = {i for ids in fold_ids.values() for part in ids for i in part}
    needed = [i for i in index if i in wanted]
    t0 = time.perf_counter()
    cases = [read_case(i, index[i][0], index[i][1]) for i in needed]
    grid = recipe.grid_shape()
    for c in cases:
        if (c.header.depth, c.header.height, c.header.width) != grid:
            raise ValueError(f"case {c.case_id}: cache grid {c.header.depth}x{c.header.height}x{c.header.width}, "
                             f"the config's data.grid is {recipe.grid}")
    cohort = ResidentCohort(cases, device)
    position = {case_id: k for k, case_id in enumerate(cohort.ids)}
    plans = [FoldPlan(f, *([position[i] for i in part] for part in fold_ids[f])) for f in folds]
    print(f"{len(cases)} cases of grid {recipe.grid} resident on {device} "
          f"({cohort.image.numel() * 2 / 2**30:.2f} GiB images) in {time.perf_counter() - t0:.1f} s; "
          f"precision {recipe.resolved_precision(device)}", flush=True)
    return Setup(flat, recipe, cohort, cases, plans, device)


def train(args) -> int:
    s = prepare(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(toml_text(s.flat))
    (out / "splits.json").write_text(splits_path(Path(args.run)).read_text())
    seed = s.recipe.seed if args.seed is None else args.seed
    for plan in s.plans:
        print(f"fold {plan.fold}: {len(plan.train)} train, {len(plan.val)} inner validation, {len(plan.test)} test "
              f"cases; {-(-len(plan.train) // s.recipe.bags_per_step)} steps an epoch", flush=True)
        FoldRun(s.recipe, s.cohort, plan, s.device, seed, out / f"fold_{plan.fold}", args.eval_bags).run()
    return 0


# ----------------------------------------------------------------------------------------------- self-check


class Checks:
    def __init__(self):
        self.failed = 0
        self.total = 0

    def report(self, name: str, ok: bool, detail: str) -> None:
        self.total += 1
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def self_check(args) -> int:
    """Consistency of the twin's data path and bookkeeping with dsmil's, on the run it was given."""
    checks = Checks()
    s = prepare(args)
    r, cohort = s.recipe, s.cohort
    run_dir = Path(args.run)
    checks.report("config", True, f"{len(s.flat)} keys of {run_dir / 'config.toml'} known "
                                  f"({sum(k in RECIPE_KEYS for k in s.flat)} followed, "
                                  f"{sum(k in NO_EFFECT_KEYS for k in s.flat)} without effect on the twin)")

    # Cache entries: what preprocessing promises (image 0 outside the brain, finite z-scores, brain slices).
    problems = []
    for c in s.cases:
        image = c.image.astype(np.float32)
        if not np.isfinite(image).all():
            problems.append(f"{c.case_id}: non-finite values")
        if np.abs(image[:, c.mask == 0]).max(initial=0.0) != 0:
            problems.append(f"{c.case_id}: image nonzero outside the brain mask")
        z = np.flatnonzero(c.slice_has_brain)
        if len(z) == 0 or (z[0], z[-1] + 1) != (c.header.brain_z_begin, c.header.brain_z_end):
            problems.append(f"{c.case_id}: brain slices differ from the header's brain_z")
    checks.report("cache", not problems, f"{len(s.cases)} entries" + ("; " + "; ".join(problems[:3]) if problems else
                                                                      ", magic/version/offsets/grid as dsmil writes them"))

    # Slab positions: brute force against the sliding window.
    bad = 0
    for k, c in enumerate(s.cases):
        brute = [z for z in range(len(c.slice_has_brain) - r.slab_depth + 1) if c.slice_has_brain[z:z + r.slab_depth].any()]
        bad += list(cohort.slab_starts(k, r.slab_depth)) != brute
    checks.report("brain_slab_starts", bad == 0, f"{len(s.cases) - bad}/{len(s.cases)} cases agree with the definition")

    # The fixed sampler against dsmil's own evaluation bags (attention.csv lists each test case's slab starts).
    position = {case_id: k for k, case_id in enumerate(cohort.ids)}
    compared, mismatches = 0, []
    for plan in s.plans:
        path = fold_dir(run_dir, plan.fold) / "attention.csv"
        if not path.exists():
            checks.report(f"fixed sampler fold {plan.fold}", False, f"{path} is missing (run dsmil cv on this fold)")
            continue
        theirs: Dict[str, List[int]] = {}
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                theirs.setdefault(row["case_id"], []).append(int(row["slab_start"]))
        for case_id, starts in theirs.items():
            mine = list(sample_instances(cohort.slab_starts(position[case_id], r.slab_depth), r.eval_instances, "fixed",
                                         np.random.default_rng(0)))
            compared += 1
            if mine != starts:
                mismatches.append(f"{case_id}: dsmil {starts}, twin {mine}")
    if compared:
        checks.report("fixed sampler vs attention.csv", not mismatches,
                      f"{compared - len(mismatches)}/{compared} test bags with dsmil's slab starts"
                      + ("; " + "; ".join(mismatches[:2]) if mismatches else ""))

    # Samplers: support and balance.
    rng = np.random.default_rng(1)
    positions = cohort.slab_starts(0, r.slab_depth)
    n = max(2, min(r.instances, len(positions) - 1))
    ok = True
    for _ in range(200):
        random_pick = sample_instances(positions, n, "random", rng)
        ok &= len(set(random_pick)) == n and set(random_pick) <= set(positions) and list(random_pick) == sorted(random_pick)
        strat = sample_instances(positions, n, "stratified", rng)
        span = positions[-1] - positions[0] + 1
        segments = [(positions[0] + k * span // n, positions[0] + (k + 1) * span // n) for k in range(n)]
        nonempty = [seg for seg in segments if ((positions >= seg[0]) & (positions < seg[1])).any()]
        ok &= len(strat) == len(nonempty) and all(lo <= v < hi for v, (lo, hi) in zip(strat, nonempty))
    labels = cohort.labels[s.plans[0].train]
    draws = np.concatenate([epoch_case_order(labels, "weighted", rng) for _ in range(200)])
    hgg_share = float(labels[draws].mean())
    shuffle_ok = sorted(epoch_case_order(labels, "shuffle", rng)) == list(range(len(labels)))
    checks.report("samplers", ok and abs(hgg_share - 0.5) < 0.02 and shuffle_ok,
                  f"random/stratified supports over 200 draws of {n} of {len(positions)}; weighted HGG share "
                  f"{hgg_share:.3f} (training fold {labels.mean():.3f}); shuffle a permutation")

    # Gather: the device gather against the voxel-by-voxel reference, identity and augmented, padding included.
    case = 0
    starts = sample_instances(cohort.slab_starts(case, r.slab_depth), r.eval_instances, "fixed", rng)
    width = len(starts) + 2
    aug = Augmentation(np.array([False, True]), np.array([0, 3]), np.array([0, -5]),
                       np.array([[1, 1, 1, 1], [1.05, 0.92, 1.1, 0.97]], np.float32),
                       np.array([[0, 0, 0, 0], [0.03, -0.07, 0.1, -0.02]], np.float32))
    x, mask = cohort.gather([case, case], [starts, starts], width, r.slab_depth, aug)
    x = x.cpu().numpy()
    c = s.cases[case]
    plain = reference_gather(c, starts, r.slab_depth, False, 0, 0, aug.scale[0], aug.offset[0])
    moved = reference_gather(c, starts, r.slab_depth, True, 3, -5, aug.scale[1], aug.offset[1])
    d, h, w = cohort.grid
    shape_ok = x.shape == (2 * width, r.slab_depth, h, w, 4) and mask.cpu().tolist() == [[True] * len(starts) + [False] * 2] * 2
    exact = np.array_equal(x[:len(starts)], plain)
    close = np.allclose(x[width:width + len(starts)], moved, rtol=1e-6, atol=1e-6)
    padded = not x[len(starts):width].any() and not x[width + len(starts):].any()
    checks.report("gather", shape_ok and exact and close and padded,
                  f"x {tuple(x.shape)}; identity bag bit-equal to the reference {exact}; flipped+shifted+scaled bag "
                  f"within 1e-6 {close}; padded rows zero {padded}")

    # Metrics: the twin's AUC, records and threshold choice on dsmil's own predictions reproduce dsmil's numbers.
    for plan in s.plans:
        folder = fold_dir(run_dir, plan.fold)
        if not (folder / "fold.json").exists():
            continue
        info = json.loads((folder / "fold.json").read_text())
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rows = list(csv.DictReader(open(folder / "predictions.csv", newline="")))
        cal_split = "test" if info["protocol"] == "select_on_test" else "val"
        cal = [(int(row["label"]), float(row["p_hgg"])) for row in rows if row["split"] == cal_split]
        labels_v, p_v = np.array([l for l, _ in cal]), np.array([q for _, q in cal])
        best = records[info["best_epoch"] - 1]["val_ema" if info["chosen_model"] == "ema" else "val"]
        mine = split_record(labels_v, p_v, best["loss"])
        threshold = choose_threshold(labels_v, p_v, info["threshold_method"])
        same = all(mine[k] == best[k] or (mine[k] is not None and best[k] is not None and abs(mine[k] - best[k]) < 1e-12)
                   for k in mine)
        checks.report(f"metrics fold {plan.fold}", same and abs(threshold - info["threshold"]) < 1e-12,
                      f"best-epoch {cal_split} record (AUC {best['auc']}, confusion {best['confusion']}) recomputed "
                      f"from predictions.csv: {same}; threshold {info['threshold_method']} {threshold:.6f} vs dsmil "
                      f"{info['threshold']:.6f}")
        train_keys, dsmil_keys = set(split_record(np.array([0, 1]), np.array([0.2, 0.7]), 0.1)), set(records[0]["train"])
        checks.report(f"record keys fold {plan.fold}", train_keys == dsmil_keys,
                      f"split record keys {sorted(train_keys ^ dsmil_keys) or 'equal'}; top-level keys only in dsmil: "
                      f"{sorted(set(records[0]) - TWIN_RECORD_KEYS) or 'none'}, only in the twin: "
                      f"{sorted(TWIN_RECORD_KEYS - set(records[0])) or 'none'}")

    # One training step at the initial weights: the loss, every gradient finite; dsmil's first epoch for scale.
    plan = s.plans[0]
    fold = FoldRun(r, cohort, plan, s.device, r.seed if args.seed is None else args.seed, Path("/nonexistent"),
                   args.eval_bags)
    fold.model.train()
    cases = plan.train[:r.bags_per_step]
    starts = [sample_instances(cohort.slab_starts(c, r.slab_depth), r.instances, r.instance_sampling, rng)[:r.instances]
              for c in cases]
    x, mask = cohort.gather(cases, starts, r.instances, r.slab_depth, Augmentation.identity(len(cases)))
    with fold.autocast():
        out = fold.model(fold.model_input(x), mask, tau_at(r, 0))
    loss = twin.mil_loss(out, cohort.upload(cohort.labels[cases]), fold.cfg, fold.class_weight_t)
    loss.backward()
    grads_ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in fold.params)
    reference = ""
    metrics_path = fold_dir(run_dir, plan.fold) / "metrics.jsonl"
    if metrics_path.exists():
        first = json.loads(metrics_path.read_text().splitlines()[0])
        reference = f"; dsmil's epoch-1 mean training loss {first['train']['loss']:.4f}"
    checks.report("forward/backward", math.isfinite(loss.item()) and grads_ok,
                  f"x {tuple(x.shape)} -> initial loss {loss.item():.4f} (ln 2 = 0.6931 at p = 1/2){reference}; "
                  f"{len(fold.params)} parameter gradients finite: {grads_ok}")
    print(f"self-check: {checks.total - checks.failed} passed, {checks.failed} failed", flush=True)
    return 1 if checks.failed else 0


# The top-level keys of the twin's metrics.jsonl records (FoldRun.train_epoch and run).
TWIN_RECORD_KEYS = {"epoch", "lr", "tau", "batch_assembly_s", "train", "grad_norm", "grad_norm_first_step",
                    "logit_spread", "health", "val", "val_ema", "attention", "selection_open", "throughput_bags_per_s",
                    "eval_bags_per_s", "epoch_time_s"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="dsmil run directory (config.toml, splits.json)")
    ap.add_argument("--index", required=True, help="CSV case_id,label,entry from `dsmil preprocess --index`")
    ap.add_argument("--folds", default="0", help="comma-separated folds of repeat 0 (default 0)")
    ap.add_argument("--out", help="the twin's run directory (config.toml, splits.json, fold_k/)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, help="base seed of the twin's random streams (default: the config's cv.seed)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, section.key=value (repeatable; dsmil's syntax)")
    ap.add_argument("--eval-bags", type=int, default=8, help="bags per evaluation forward pass (default 8)")
    ap.add_argument("--self-check", action="store_true", help="consistency checks against the run; PASS/FAIL lines")
    args = ap.parse_args(argv)
    try:
        if args.self_check:
            return self_check(args)
        if not args.out:
            ap.error("--out is required (unless --self-check)")
        return train(args)
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
