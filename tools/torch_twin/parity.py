# Parity of the C++ model with its PyTorch twin: reads a bundle (BUNDLE.md: weights, inputs, logits, loss,
# gradients, BN statistics written by the C++ side), recomputes all in float64 and prints max|a-b|/max|b| per tensor.
"""Usage:
  parity.py BUNDLE_DIR [--device cuda|cpu] [--no-native] [--no-switches]
  parity.py --self-test [--precision fp32|tf32|bf16] [--device ...] [--keep DIR] [--seeds N] [--first-seed S]

Compares each tensor of the bundle with the twin run in float64 (the reference), prints one line per
tensor and a closing line `parity: N passed, M failed (worst: NAME REL_ERR)`; exit status 0 when all
pass, 1 when any fails, 2 when the bundle cannot be read or does not fit the twin. The column `torch-<precision>` is the same
twin run at the bundle's precision (PyTorch's own error there): in fp32 one run, shown for comparison; in tf32 and bf16
the farthest of ENSEMBLE_RUNS runs, which sets each tensor's limit with the floor tolerance (BUNDLE.md, "Switches").
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import twin  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")
REQUIRED_CONFIG_KEYS = (
    "depth", "width", "slab_depth", "pooling", "topk", "attention", "attention_temperature", "tau",
    "label_smoothing", "focal_gamma", "stream_weight", "class_weight", "bags", "instances", "height",
    "width_px", "precision",
)
OUTPUT_NAMES = ("h", "margins", "selection", "attention", "y1", "y2", "y", "loss")
REQUIRED_OUTPUTS = ("y1", "y2", "y", "loss")


@dataclass(frozen=True)
class Tolerance:
    forward: float   # logits, loss, embeddings, margins, attention, BN running statistics (max-relative)
    gradient: float  # parameter gradients: max-relative in fp32; the floor of the L2 limit in tf32 / bf16


# Reasoning in BUNDLE.md ("Tolerances"). fp32 means strict fp32 (TF32 off), tf32 fp32 with TF32 tensor
# cores in convolutions and GEMMs, bf16 the mixed-precision mode.
TOLERANCES = {
    "fp32": Tolerance(forward=1e-4, gradient=1e-3),
    "tf32": Tolerance(forward=2e-2, gradient=2e-2),
    "bf16": Tolerance(forward=1e-1, gradient=1e-1),
}


# tf32 / bf16: each tensor of the C++ side may be up to ENSEMBLE_FACTOR times as far from float64 as the
# farthest of ENSEMBLE_RUNS PyTorch runs at the same precision (or the floor tolerance, whichever is
# larger). The runs differ only in rounding: the first takes the bundle's inputs, each other one inputs
# moved by up to one rounding of the precision's operands (INPUT_ROUNDING, relative). The factor is
# calibrated on PyTorch against PyTorch alone (`--self-test --seeds N`); reasoning and numbers in BUNDLE.md.
ENSEMBLE_RUNS = 8
ENSEMBLE_FACTOR = 3.0
INPUT_ROUNDING = {"tf32": 2.0 ** -11, "bf16": 2.0 ** -8}


class BundleError(Exception):
    """The bundle is missing files, or its files disagree with config.json."""


@dataclass
class Bundle:
    config: dict
    params: Dict[str, np.ndarray]
    buffers: Dict[str, np.ndarray]
    x: np.ndarray
    mask: np.ndarray
    target: np.ndarray
    outputs: Dict[str, np.ndarray] = field(default_factory=dict)
    grads: Dict[str, np.ndarray] = field(default_factory=dict)
    buffers_after: Optional[Dict[str, np.ndarray]] = None


@dataclass
class TwinRun:
    outputs: Dict[str, np.ndarray]
    grads: Dict[str, np.ndarray]
    buffers_after: Dict[str, np.ndarray]
    own_selection: Optional[np.ndarray]  # [B, n] bool: this run's own max/top-k choice
    switches: Optional["SwitchCandidates"] = None  # reference only: elements near a ReLU / max-pool switch
    param_shapes: Optional[List[tuple]] = None  # twin-layout shapes, in the order of `grads`


@dataclass
class Check:
    group: str  # output, buffer, grad, selection, layout
    name: str
    err: float
    tol: float
    ref_scale: float = float("nan")
    native_err: Optional[float] = None
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.err <= self.tol

    def line(self, native_label: str) -> str:
        native = f"  {native_label} {self.native_err:8.2e}" if self.native_err is not None else ""
        scale = f"  max|ref| {self.ref_scale:8.2e}" if math.isfinite(self.ref_scale) else ""
        note = f"  ({self.note})" if self.note else ""
        status = "PASS" if self.passed else "FAIL"
        return f"{status}  {self.group:9s} {self.name:48s} err {self.err:8.2e}  tol {self.tol:7.1e}{native}{scale}{note}"


# ----------------------------------------------------------------------------------------------- bundle I/O


def read_npy_folder(folder: Path) -> Dict[str, np.ndarray]:
    return {p.name[: -len(".npy")]: np.load(p, allow_pickle=False) for p in sorted(folder.glob("*.npy"))}


def read_bundle(path: Path) -> Bundle:
    if not (path / "config.json").is_file():
        raise BundleError(f"{path}: no config.json")
    config = json.loads((path / "config.json").read_text())
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise BundleError(f"{path}/config.json: missing keys {', '.join(missing)}")
    if config["precision"] not in PRECISIONS:
        raise BundleError(f"{path}/config.json: precision '{config['precision']}' is not one of {', '.join(PRECISIONS)}")
    for folder in ("params", "buffers", "inputs", "outputs", "grads"):
        if not (path / folder).is_dir():
            raise BundleError(f"{path}: no folder {folder}/")
    inputs = read_npy_folder(path / "inputs")
    for name in ("x", "mask", "target"):
        if name not in inputs:
            raise BundleError(f"{path}: no inputs/{name}.npy")
    bundle = Bundle(
        config=config,
        params=read_npy_folder(path / "params"),
        buffers=read_npy_folder(path / "buffers"),
        x=inputs["x"],
        mask=inputs["mask"],
        target=inputs["target"],
        outputs=read_npy_folder(path / "outputs"),
        grads=read_npy_folder(path / "grads"),
        buffers_after=read_npy_folder(path / "buffers_after") if (path / "buffers_after").is_dir() else None,
    )
    validate_bundle(bundle, str(path))
    return bundle


def validate_bundle(b: Bundle, where: str) -> None:
    c = b.config
    bags, n = int(c["bags"]), int(c["instances"])
    want_x = (bags * n, int(c["slab_depth"]), int(c["height"]), int(c["width_px"]), 4)
    problems = []
    if tuple(b.x.shape) != want_x:
        problems.append(f"inputs/x.npy has shape {b.x.shape}, config.json says {want_x}")
    if tuple(b.mask.shape) != (bags, n):
        problems.append(f"inputs/mask.npy has shape {b.mask.shape}, config.json says {(bags, n)}")
    elif not np.all((b.mask != 0).sum(axis=1) >= 1):
        problems.append("inputs/mask.npy: every bag needs at least one unmasked instance")
    if tuple(b.target.shape) != (bags,):
        problems.append(f"inputs/target.npy has shape {b.target.shape}, config.json says {(bags,)}")
    elif not np.all((b.target == 0) | (b.target == 1)):
        problems.append(f"inputs/target.npy holds labels other than 0/1: {np.unique(b.target)}")
    for name, arr in (("inputs/mask.npy", b.mask), ("inputs/target.npy", b.target)):
        if arr.dtype.kind not in "iu":
            problems.append(f"{name} has dtype {arr.dtype}, wants int32")
    for name in REQUIRED_OUTPUTS:
        if name not in b.outputs:
            problems.append(f"no outputs/{name}.npy")
    want_outputs = {"y1": (bags, 2), "y2": (bags, 2), "y": (bags, 2), "loss": (1,), "margins": (bags, n),
                    "attention": (bags, n), "selection": (bags, n), "h": (bags * n, 8 * int(c["width"]))}
    for name, arr in b.outputs.items():
        if name in want_outputs and tuple(arr.shape) != want_outputs[name]:
            problems.append(f"outputs/{name}.npy has shape {arr.shape}, wants {want_outputs[name]}")
    for name, arr in b.grads.items():
        if name in b.params and arr.shape != b.params[name].shape:
            problems.append(f"grads/{name}.npy has shape {arr.shape}, params/{name}.npy {b.params[name].shape}")
    for name, arr in (b.buffers_after or {}).items():
        if name in b.buffers and arr.shape != b.buffers[name].shape:
            problems.append(f"buffers_after/{name}.npy has shape {arr.shape}, buffers/{name}.npy {b.buffers[name].shape}")
    for group, arrays in (("params", b.params), ("buffers", b.buffers), ("inputs", {"x": b.x}), ("outputs", b.outputs),
                          ("grads", b.grads), ("buffers_after", b.buffers_after or {})):
        for name, arr in arrays.items():
            if arr.dtype.kind != "f":
                problems.append(f"{group}/{name}.npy has dtype {arr.dtype}, wants float32")
            elif not np.all(np.isfinite(arr)):
                problems.append(f"{group}/{name}.npy holds non-finite values")
    if problems:
        raise BundleError(f"{where}:\n  " + "\n  ".join(problems))


def write_npy_folder(folder: Path, arrays: Dict[str, np.ndarray], dtype) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(arr, dtype=dtype))


def write_bundle(path: Path, b: Bundle) -> None:
    """Writes a bundle in the BUNDLE.md format (the self-test's stand-in for the C++ dumper)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(b.config, indent=1))
    write_npy_folder(path / "params", b.params, np.float32)
    write_npy_folder(path / "buffers", b.buffers, np.float32)
    write_npy_folder(path / "inputs", {"x": b.x}, np.float32)
    write_npy_folder(path / "inputs", {"mask": b.mask, "target": b.target}, np.int32)
    write_npy_folder(path / "outputs", b.outputs, np.float32)
    write_npy_folder(path / "grads", b.grads, np.float32)
    if b.buffers_after is not None:
        write_npy_folder(path / "buffers_after", b.buffers_after, np.float32)


# ----------------------------------------------------------------------------------------------- running the twin


def autocast_context(mode: str, device: torch.device):
    if mode == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


# ----------------------------------------------------------------------------------------------- switches
#
# The gradient is not a continuous function of the activations: a ReLU whose input lies within rounding of
# 0, or a max-pool window whose two largest values are that close, may decide the other way in the C++ run
# than in the float64 reference, and one such switch moves the gradients of every layer below it by up to a
# few 1e-2 (measured with the twin itself, fp32 against float64: ResNet-18 w=8, 10 slabs of 4x32x32, one
# ReLU input of 3e-6 switched and 45 gradient tensors moved by 4e-3 to 3e-2 while the forward agreed to
# 3e-6). So in fp32 the reference lists the elements within tau of switching (tau from the C++ side's
# measured forward error), computes each one's exact first-order effect on all parameter gradients, and
# lets a greedy search switch those that bring the C++ gradients closer (each with its whole effect, never
# a fraction). The gradients are then judged at the rounding tolerance, and the switches used are printed.
# In tf32 and bf16 switches are many and small; their tolerances include them (BUNDLE.md).

SWITCH_TAU_FACTOR = 2.0   # tau = this times the C++ forward error (capped at the forward tolerance)
SWITCH_CLIP = 1e-2        # a tensor counts at most this much (a relative L2 error of 0.1) in the search
SWITCH_LIMIT = 128        # at most this many candidates, the closest to switching first,
SWITCH_MEMORY = {"cuda": 8 << 30, "cpu": 2 << 30}  # and at most this many bytes of their effects (4 P each)


@dataclass
class SwitchCandidates:
    tau_rel: float
    within_tau: int              # candidates found, before the limit
    labels: List[str]            # one per kept candidate
    effects: torch.Tensor        # [k, P] float32: each switch's change of the flattened gradients (twin order)


class DiscontinuityRecorder:
    """Keeps every ReLU's and max pool's input and output of one forward (the outputs keep their gradients)."""

    def __init__(self, model: torch.nn.Module):
        self.names = {module: name for name, module in model.named_modules()}
        self.sites = []  # (label, module, input, output)
        self.handles = [module.register_forward_hook(self.keep)
                        for module in model.modules() if isinstance(module, (torch.nn.ReLU, torch.nn.MaxPool3d))]

    def keep(self, module, inputs, output):
        if output.requires_grad:
            output.retain_grad()
            calls = sum(1 for _, m, _, _ in self.sites if m is module)
            self.sites.append((f"{self.names[module]}#{calls + 1}", module, inputs[0], output))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def pool_winners(pool: torch.nn.MaxPool3d, x: torch.Tensor):
    """For each window of x[N, C, D, H, W]: the flat (d H + h) W + w indices of its largest and second largest
    values, and the two values; each [N, C, D', H', W']."""
    kernel, stride, pad = (tuple(v) if isinstance(v, (tuple, list)) else (v,) * 3
                           for v in (pool.kernel_size, pool.stride, pool.padding))
    padded = torch.nn.functional.pad(x, (pad[2], pad[2], pad[1], pad[1], pad[0], pad[0]), value=float("-inf"))
    windows = padded.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1]).unfold(4, kernel[2], stride[2])
    values, local = windows.reshape(*windows.shape[:5], -1).topk(2, dim=-1)
    out_d, out_h, out_w = (torch.arange(size, device=x.device) for size in windows.shape[2:5])
    size_h, size_w = x.shape[3], x.shape[4]

    def flat(local_index: torch.Tensor) -> torch.Tensor:
        d = out_d[:, None, None] * stride[0] - pad[0] + local_index // (kernel[1] * kernel[2])
        h = out_h[None, :, None] * stride[1] - pad[1] + (local_index // kernel[2]) % kernel[1]
        w = out_w[None, None, :] * stride[2] - pad[2] + local_index % kernel[2]
        return (d * size_h + h) * size_w + w

    return flat(local[..., 0]), flat(local[..., 1]), values[..., 0], values[..., 1]


def switch_candidates(recorder: DiscontinuityRecorder, params: List, tau_rel: float) -> SwitchCandidates:
    """The ReLU inputs within tau_rel * max|input| of 0 and the max-pool windows whose two largest values are
    that close, each with its first-order effect on the parameter gradients if it decided the other way."""
    found = []  # (closeness in units of tau, label, target tensor, function building the gradient change)
    for label, module, x, out in recorder.sites:
        if out.grad is None:
            continue
        xd, dy = x.detach(), out.grad
        tau = tau_rel * float(xd.abs().max())
        if tau == 0.0:
            continue
        if isinstance(module, torch.nn.ReLU):
            where = torch.nonzero((xd.abs() <= tau).flatten()).flatten()
            values = xd.flatten()[where].tolist()
            dys = dy.flatten()[where].tolist()
            for flat, value, g in zip(where.tolist(), values, dys):
                if g == 0.0:
                    continue  # no gradient arrives there (e.g. a stem ReLU output that wins no max-pool window)
                # switching removes dy where the reference passes it, adds it where the reference blocks it
                change = -g if value > 0 else g
                found.append((abs(value) / tau, f"{label} [{flat}] input {value:.1e}", x,
                              lambda flat=flat, change=change, like=xd: one_hot_change(like, [(flat, change)])))
        else:
            first, second, v1, v2 = pool_winners(module, xd)
            gap = v1 - v2
            where = torch.nonzero(((gap <= tau) & (v2 > 0)).flatten()).flatten()
            windows_per_volume = first[0, 0].numel()
            volume = xd[0, 0].numel()
            rows = zip(where.tolist(), first.flatten()[where].tolist(), second.flatten()[where].tolist(),
                       gap.flatten()[where].tolist(), dy.flatten()[where].tolist())
            for window, a, b, window_gap, g in rows:
                if g == 0.0:
                    continue
                # the gradient moves from the reference's winner a to the runner-up b
                base = (window // windows_per_volume) * volume
                found.append((window_gap / tau, f"{label} window [{window}] gap {window_gap:.1e}", x,
                              lambda a=base + a, b=base + b, g=g, like=xd: one_hot_change(like, [(a, -g), (b, g)])))
    found.sort(key=lambda item: item[0])
    total_params = sum(p.numel() for p in params)
    limit = min(SWITCH_LIMIT, SWITCH_MEMORY.get(params[0].device.type, SWITCH_MEMORY["cpu"]) // (4 * total_params))
    kept = found[:limit]
    rows = []
    for _, _, target, build in kept:
        grads = torch.autograd.grad([target], params, [build()], retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).detach().flatten().float()
                               for g, p in zip(grads, params)]))
    effects = torch.stack(rows) if rows else torch.zeros((0, total_params), device=params[0].device)
    return SwitchCandidates(tau_rel, len(found), [label for _, label, _, _ in kept], effects)


def one_hot_change(like: torch.Tensor, entries) -> torch.Tensor:
    """A tensor of like's shape (logical, row-major order), zero but for (flat index, value) entries."""
    change = torch.zeros(like.numel(), dtype=like.dtype, device=like.device)
    for flat, value in entries:
        change[flat] += value
    return change.view(like.shape)


def explain_by_switches(residual: torch.Tensor, effects: torch.Tensor, segments: List[tuple]) -> List[int]:
    """Greedy: switch (subtract the whole effect of) the candidate that most lowers
    sum over tensors of min(||residual_t||^2 / ||reference gradient_t||^2, SWITCH_CLIP), while one does.
    segments: (start, size, 1 / ||reference gradient_t||^2, or 0 to leave the tensor out) per tensor. The clip
    keeps a tensor that is far off (a bug) from recruiting switches that would blur the other tensors."""
    k = effects.shape[0]
    if k == 0:
        return []
    device = effects.device
    weight = torch.tensor([w for _, _, w in segments], dtype=torch.float64, device=device)
    norm2 = torch.zeros(len(segments), dtype=torch.float64, device=device)         # ||r_t||^2
    inner = torch.zeros((len(segments), k), dtype=torch.float64, device=device)     # <r_t, w_it>
    gram = torch.zeros((len(segments), k, k), dtype=torch.float64, device=device)   # <w_it, w_jt>
    for t, (start, size, _) in enumerate(segments):
        r = residual[start:start + size]
        part = effects[:, start:start + size]
        norm2[t] = float(r.double().pow(2).sum())
        inner[t] = (part @ r).double()
        gram[t] = (part @ part.T).double()

    def objective(n2: torch.Tensor) -> torch.Tensor:  # n2 [..., T]
        return torch.clamp(n2 * weight, max=SWITCH_CLIP).sum(dim=-1)

    chosen: List[int] = []
    current = objective(norm2)
    while len(chosen) < k:
        # ||r_t - sum_S w - w_j||^2 for every candidate j, from the current residual's norms
        cross = inner - (gram[:, :, chosen].sum(dim=2) if chosen else 0.0)          # <r_t - sum_S w, w_jt>
        trial = norm2[:, None] - 2 * cross + gram.diagonal(dim1=1, dim2=2)          # [T, k]
        scores = objective(trial.T)                                                  # [k]
        if chosen:
            scores[chosen] = math.inf
        best = int(scores.argmin())
        if float(scores[best]) >= float(current):
            break
        norm2 = trial[:, best]
        current = scores[best]
        chosen.append(best)
    return chosen


# ----------------------------------------------------------------------------------------------- running the twin


def run_twin(b: Bundle, mode: str, device: torch.device, selected: Optional[np.ndarray],
             switch_tau: Optional[Callable[[Dict[str, np.ndarray]], float]] = None,
             channels_last: Optional[bool] = None, input_jitter: Optional[int] = None) -> TwinRun:
    """One training-mode forward (batch statistics), the loss and its backward. mode: fp64 (the reference),
    fp32 (strict), tf32, or bf16 (autocast). `selected` [B, n] bool fixes the max/top-k choice; None lets
    this run choose. switch_tau(outputs) -> tau asks for the switch candidates. channels_last (default: for
    tf32 and bf16, like the C++ side) picks the channels_last_3d memory format, else NCDHW. input_jitter
    (tf32 / bf16; a seed) multiplies each input by 1 + U(-u, u), u = INPUT_ROUNDING[mode]: the same problem,
    rounded differently."""
    cfg = twin.config_from_bundle(b.config)
    model = twin.DualStreamMIL(cfg)
    twin.load_cpp_tensors(
        model,
        {k: torch.from_numpy(v.astype(np.float64)) for k, v in b.params.items()},
        {k: torch.from_numpy(v.astype(np.float64)) for k, v in b.buffers.items()},
    )
    dtype = torch.float64 if mode == "fp64" else torch.float32
    model.to(device=device, dtype=dtype)
    x_cpp = b.x.astype(np.float32)
    if input_jitter is not None:
        u = INPUT_ROUNDING[mode]
        x_cpp = x_cpp * (1.0 + np.random.default_rng(input_jitter).uniform(-u, u, x_cpp.shape)).astype(np.float32)
    x = twin.from_channels_last(torch.from_numpy(x_cpp).to(device, dtype))
    if channels_last is None:
        channels_last = mode in ("tf32", "bf16")
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    else:
        x = x.contiguous()
    mask = torch.from_numpy(b.mask != 0).to(device)
    target = torch.from_numpy(b.target.astype(np.int64)).to(device)
    fixed = torch.from_numpy(selected).to(device) if selected is not None else None
    model.train()
    recorder = DiscontinuityRecorder(model) if switch_tau is not None else None
    twin.set_tf32(mode == "tf32")
    try:
        with autocast_context(mode, device):
            out = model(x, mask, cfg.tau, fixed)
            loss = twin.mil_loss(out, target, cfg)
        loss.backward(retain_graph=recorder is not None)
    finally:
        twin.set_tf32(False)
    outputs = {name: to_numpy(out[name]) for name in ("h", "margins", "selection", "attention", "y1", "y2", "y")}
    outputs["loss"] = to_numpy(loss).reshape(1)
    named = twin.cpp_parameters(model)
    grads = {}
    for name, p in named:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        grads[name] = to_numpy(twin.to_cpp_layout(g))
    buffers_after = {name: to_numpy(buf) for name, buf in twin.cpp_buffers(model)}
    own = None
    if cfg.pooling != "soft":
        k = 1 if cfg.pooling == "max" else cfg.topk
        own = to_numpy(twin.topk_selection(out["margins"], mask, k)) > 0
    switches = None
    if recorder is not None:
        switches = switch_candidates(recorder, [p for _, p in named], switch_tau(outputs))
        recorder.remove()
    return TwinRun(outputs=outputs, grads=grads, buffers_after=buffers_after, own_selection=own, switches=switches,
                   param_shapes=[tuple(p.shape) for _, p in named])


# ----------------------------------------------------------------------------------------------- comparison


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / max(1e-6, ||b||): the gradient measure of tf32 and bf16 (see ENSEMBLE_FACTOR)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.linalg.norm(a - b)) / max(1e-6, float(np.linalg.norm(b)))


def rel_err(a: np.ndarray, b: np.ndarray, scale: Optional[float] = None) -> float:
    """max|a - b| / max(1e-6, max|b|) (or / max(1e-6, scale) when the reference is structurally zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not np.all(np.isfinite(a)):
        return float("inf")
    denom = max(1e-6, float(np.max(np.abs(b))) if scale is None else scale)
    return float(np.max(np.abs(a - b))) / denom


def check_selection(z_ref: np.ndarray, mask: np.ndarray, cpp_selected: np.ndarray, own: np.ndarray, k: int,
                    tol: float) -> Check:
    """The C++ side's max/top-k choice must be a top-K set of the reference margins, up to a near tie of
    tol * max|z| (a lower-precision run may order two near-equal margins the other way)."""
    valid = mask != 0
    scale = float(np.max(np.abs(z_ref[valid])))
    worst_gap = 0.0
    problems = []
    for bag in range(z_ref.shape[0]):
        chosen = cpp_selected[bag]
        want = min(k, int(valid[bag].sum()))
        if int(chosen.sum()) != want or np.any(chosen & ~valid[bag]):
            problems.append(f"bag {bag}: chose {np.flatnonzero(chosen).tolist()}, wants {want} unmasked")
            continue
        others = valid[bag] & ~chosen
        if others.any():
            gap = float(np.max(z_ref[bag][others]) - np.min(z_ref[bag][chosen]))
            worst_gap = max(worst_gap, gap)
    err = float("inf") if problems else max(0.0, worst_gap) / max(1e-6, scale)
    note = "; ".join(problems)
    if not problems and not np.array_equal(cpp_selected, own):
        note = f"differs from the float64 top-{k} by a near tie: {np.flatnonzero((cpp_selected != own).any(axis=1)).tolist()}"
    return Check("selection", f"top-{k} of margins", err, tol, scale, note=note)


def explain_gradients(b: Bundle, ref: TwinRun):
    """The switches (candidate indices) that explain_by_switches picks for the residual of the C++ gradients,
    normalised per tensor, and their summed effect per parameter in C++ layouts ({} if none). Prints them."""
    sw = ref.switches
    if sw is None:
        return [], {}
    names = list(ref.grads)
    device = sw.effects.device

    def flat(arrays: Dict[str, np.ndarray]) -> torch.Tensor:
        return torch.cat([twin.from_cpp_layout(torch.from_numpy(np.asarray(arrays[n], dtype=np.float32))).reshape(-1)
                          for n in names]).to(device)

    residual = flat(b.grads) - flat(ref.grads)
    # Each tensor weighs by 1 / ||reference gradient||^2; tensors whose gradient is (structurally) 0 not at all.
    norms = [float(np.sum(ref.grads[n] ** 2)) for n in names]
    floor = 1e-20 * max(norms)
    segments, start = [], 0
    for norm, shape in zip(norms, ref.param_shapes):
        size = int(np.prod(shape))
        segments.append((start, size, 1.0 / norm if norm > floor else 0.0))
        start += size
    chosen = explain_by_switches(residual, sw.effects, segments)
    print(f"switches: {sw.within_tau} ReLU inputs / max-pool windows lie within tau = {sw.tau_rel:.1e} x max|input| "
          f"of switching{f' (the {len(sw.labels)} closest kept)' if len(sw.labels) < sw.within_tau else ''}; "
          f"the C++ gradients match best with {len(chosen)} switched" + (":" if chosen else ""))
    for i in chosen:
        print(f"  switched: {sw.labels[i]}")
    if not chosen:
        return [], {}
    total = sw.effects[chosen].sum(dim=0).double().cpu()
    out, offset = {}, 0
    for n, shape in zip(names, ref.param_shapes):
        size = int(np.prod(shape))
        out[n] = twin.to_cpp_layout(total[offset:offset + size].view(shape)).numpy()
        offset += size
    return chosen, out


def compare(b: Bundle, ref: TwinRun, natives: List[TwinRun], tol: Tolerance,
            cpp_selected: Optional[np.ndarray]) -> List[Check]:
    """One Check per output, buffer and gradient of the bundle against the float64 reference `ref`.
    `natives` are the PyTorch runs at the bundle's precision (none: no calibration column); in tf32 / bf16
    they set the limits with the floor tolerances (ENSEMBLE_FACTOR)."""
    checks: List[Check] = []
    cfg = b.config
    reduced = cfg["precision"] != "fp32"
    if cpp_selected is not None:
        k = 1 if cfg["pooling"] == "max" else int(cfg["topk"])
        checks.append(check_selection(ref.outputs["margins"], b.mask, cpp_selected, ref.own_selection, k, tol.forward))

    def judge(group: str, name: str, got: np.ndarray, want: np.ndarray, floor: float, of_native: Callable,
              measure: Callable, note: str = "", explained: Optional[np.ndarray] = None) -> None:
        native_err = max(measure(of_native(run), want) for run in natives) if natives else None
        raw = measure(got, want)
        err = raw if explained is None else measure(got - explained, want)
        if err != raw:
            note = (note + "; " if note else "") + f"before the switches {raw:.2e}"
        limit = floor
        if reduced and native_err is not None:
            limit = max(floor, ENSEMBLE_FACTOR * native_err)
            note = (note + "; " if note else "") + f"tol = max({floor:.0e}, {ENSEMBLE_FACTOR:g} x torch)"
        ref_scale = float(np.max(np.abs(want))) if want.size else 0.0
        checks.append(Check(group, name, err, limit, ref_scale, native_err, note))

    for name in OUTPUT_NAMES:
        if name in b.outputs:
            if name == "selection" and cfg["pooling"] != "soft":
                continue  # a discrete choice: checked above
            judge("output", name, b.outputs[name], ref.outputs[name], tol.forward,
                  lambda run, name=name: run.outputs[name], rel_err)
    extra = sorted(set(b.outputs) - set(OUTPUT_NAMES))
    for name in extra:
        checks.append(Check("output", name, float("inf"), tol.forward, note="unknown output file"))

    if b.buffers_after is not None:
        for name, want in ref.buffers_after.items():
            if name not in b.buffers_after:
                checks.append(Check("buffer", name, float("inf"), tol.forward, note="missing in buffers_after/"))
            else:
                judge("buffer", name, b.buffers_after[name], want, tol.forward,
                      lambda run, name=name: run.buffers_after[name], rel_err)

    # Structurally zero gradients are measured against a sibling's scale: gate_w's bias shifts every
    # score of a bag equally, which the attention softmax ignores, so its true gradient is 0.
    scale_of = {}
    if cfg["attention"] == "gated":
        scale_of["head.gate_w.bias"] = "head.gate_w.weight"
    missing = [name for name in ref.grads if name not in b.grads]
    checks += [Check("grad", name, float("inf"), tol.gradient, note="missing in grads/") for name in missing]
    checks += [Check("grad", name, float("inf"), tol.gradient, note="not a parameter of the twin")
               for name in sorted(set(b.grads) - set(ref.grads))]
    if missing:
        return checks
    _, explained = explain_gradients(b, ref)
    if reduced and not natives:
        print(f"note: no torch-{cfg['precision']} runs: judged at the floor tolerances alone")
    for name, want in ref.grads.items():
        if name in scale_of:
            scale = float(np.max(np.abs(ref.grads[scale_of[name]])))
            note = f"true gradient 0; err relative to max|grad {scale_of[name]}|"

            def measure(a, b_, scale=scale):
                return rel_err(a, b_, scale)
        elif reduced:
            # ReLU switches make tf32 / bf16 gradients differ from exact ones by far more than rounding
            # does (BUNDLE.md): the C++ side must be about as close to float64 as PyTorch at its precision.
            measure, note = rel_l2, "L2"
        else:
            measure, note = rel_err, ""
        judge("grad", name, b.grads[name], want, tol.gradient, lambda run, name=name: run.grads[name], measure,
              note, explained.get(name))
    return checks


def reference_runs(b: Bundle, device: torch.device, with_native: bool, switches: bool = True,
                   switches_everywhere: bool = False):
    """The float64 reference of the bundle, the PyTorch runs at its precision (one in fp32, ENSEMBLE_RUNS in
    tf32 / bf16; none without with_native) and the C++ side's max / top-k choice, for compare()."""
    precision = b.config["precision"]
    tol = TOLERANCES[precision]
    cpp_selected = None
    if b.config["pooling"] != "soft" and "selection" in b.outputs:
        cpp_selected = b.outputs["selection"] > 0

    def switch_tau(ref_outputs: Dict[str, np.ndarray]) -> float:
        """tau from the C++ side's measured forward error, capped at the forward tolerance."""
        measured = [rel_err(b.outputs[k], ref_outputs[k]) for k in ("h", "margins", "attention", "y1", "y2", "y")
                    if k in b.outputs]
        return min(tol.forward, SWITCH_TAU_FACTOR * max(measured))

    use_switches = switches and (precision == "fp32" or switches_everywhere)
    ref = run_twin(b, "fp64", device, cpp_selected, switch_tau if use_switches else None)
    if b.config["pooling"] != "soft" and cpp_selected is None:
        print("note: no outputs/selection.npy: the float64 twin chose the max/top-k instances itself")
    natives: List[TwinRun] = []
    if with_native:
        fixed = cpp_selected if cpp_selected is not None else ref.own_selection
        jitters = [None] + (list(range(1, ENSEMBLE_RUNS)) if precision != "fp32" else [])
        try:
            natives = [run_twin(b, precision, device, fixed, input_jitter=j) for j in jitters]
        except RuntimeError as error:
            print(f"note: the torch-{precision} runs failed on {device}: {error}")
    return ref, natives, cpp_selected


def check_bundle(b: Bundle, device: torch.device, with_native: bool, switches: bool = True,
                 switches_everywhere: bool = False) -> List[Check]:
    ref, natives, cpp_selected = reference_runs(b, device, with_native, switches, switches_everywhere)
    return compare(b, ref, natives, TOLERANCES[b.config["precision"]], cpp_selected)


def native_label(precision: str) -> str:
    return f"torch-{precision}" + (f" (farthest of {ENSEMBLE_RUNS})" if precision != "fp32" else "")


def summarize(checks: List[Check], native_label: str) -> int:
    for c in checks:
        print(c.line(native_label))
    failed = [c for c in checks if not c.passed]
    worst = max(checks, key=lambda c: c.err / c.tol) if checks else None
    worst_text = f" (worst: {worst.group} {worst.name} {worst.err:.2e})" if worst else ""
    print(f"parity: {len(checks) - len(failed)} passed, {len(failed)} failed{worst_text}")
    return 1 if failed else 0


def describe_environment(device: torch.device) -> None:
    line = f"torch {torch.__version__}, device {device}"
    if device.type == "cuda":
        line += f" ({torch.cuda.get_device_name(device)}), cuDNN {torch.backends.cudnn.version()}"
    print(line)


# ----------------------------------------------------------------------------------------------- self-test

SELF_TEST_CASES = (
    # recommended-v2-like: top-k, gated attention, focal loss with smoothing, unequal class weights
    dict(pooling="topk", attention="gated", topk=3, focal_gamma=2.0, label_smoothing=0.2, class_weight=[0.7, 1.6]),
    # seed-v1-like: max pooling, DSMIL attention, smoothed cross entropy
    dict(pooling="max", attention="dsmil", topk=1, focal_gamma=0.0, label_smoothing=0.1, class_weight=[1.0, 1.0]),
    # soft pooling with temperatures other than 1
    dict(pooling="soft", attention="dsmil", topk=3, focal_gamma=2.0, label_smoothing=0.1, class_weight=[1.3, 0.8],
         tau=0.5, attention_temperature=2.0),
    # ResNet-10, slabs of 2 slices (kernel depth 1), gated attention with soft pooling
    dict(pooling="soft", attention="gated", topk=3, focal_gamma=0.0, label_smoothing=0.0, class_weight=[1.0, 2.0],
         depth=10, slab_depth=2),
)


def self_test_bundle(case: dict, precision: str, device: torch.device, seed: int, args) -> Bundle:
    """A random model and inputs, run by the twin at `precision` as a stand-in for the C++ side."""
    config = dict(depth=args.depth, width=args.width, slab_depth=4, topk=3, attention_temperature=1.0, tau=1.0,
                  stream_weight=0.5, query_size=128, bags=args.bags, instances=args.instances, height=args.size,
                  width_px=args.size, precision=precision, device=str(device), writer="parity.py --self-test")
    config.update(case)
    cfg = twin.config_from_bundle(config)
    generator = torch.Generator().manual_seed(seed)
    model = twin.DualStreamMIL(cfg)
    twin.init_like_cpp(model, generator, perturb_bn=True)
    bags, n = config["bags"], config["instances"]
    x = torch.randn((bags * n, cfg.slab_depth, args.size, args.size, 4), generator=generator)
    mask = np.ones((bags, n), dtype=np.int32)
    mask[-1, n - 2:] = 0  # the last bag is padded: two masked instances
    target = (np.arange(bags) % 2).astype(np.int32)
    b = Bundle(
        config=config,
        params={k: twin.to_cpp_layout(p.detach()).numpy() for k, p in twin.cpp_parameters(model)},
        buffers={k: buf.numpy().copy() for k, buf in twin.cpp_buffers(model)},
        x=x.numpy(), mask=mask, target=target,
    )
    # NCDHW: the calibration run of tf32 / bf16 bundles uses channels_last_3d, so the two differ in rounding
    # like two implementations do.
    run = run_twin(b, precision, device, None, channels_last=False)
    b.outputs = {k: v for k, v in run.outputs.items()}
    if cfg.pooling != "soft":  # as the C++ MilOutput.selection: 1/K on the chosen instances
        b.outputs["selection"] = run.own_selection / run.own_selection.sum(axis=1, keepdims=True)
    b.grads = run.grads
    b.buffers_after = run.buffers_after
    return b


def check_layout_convention() -> Check:
    """The conv weight and activation conversions against the C++ definition written out directly
    (tensor/op_declarations.inc): y[n, d, h, w, k] = sum_{t, r, s, c} x[n, d sd - pd + t, ...] w[k, t, r, s, c]."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn((2, 3, 6, 7, 3), generator=g, dtype=torch.float64)  # [N, D, H, W, C]
    w = torch.randn((4, 3, 3, 2, 3), generator=g, dtype=torch.float64)  # [K, T, R, S, C]
    stride, pad = (1, 2, 1), (1, 1, 0)
    xp = np.pad(x.numpy(), ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (pad[2], pad[2]), (0, 0)))
    out_shape = [(x.shape[1 + i] + 2 * pad[i] - w.shape[1 + i]) // stride[i] + 1 for i in range(3)]
    direct = np.zeros((2, *out_shape, 4))
    for d in range(out_shape[0]):
        for h in range(out_shape[1]):
            for ww in range(out_shape[2]):
                window = xp[:, d * stride[0]: d * stride[0] + 3, h * stride[1]: h * stride[1] + 3,
                            ww * stride[2]: ww * stride[2] + 2, :]
                direct[:, d, h, ww, :] = np.einsum("ntrsc,ktrsc->nk", window, w.numpy())
    conv = torch.nn.functional.conv3d(twin.from_channels_last(x).contiguous(), twin.from_cpp_layout(w),
                                      stride=stride, padding=pad)
    got = conv.permute(0, 2, 3, 4, 1).numpy()  # back to channels-last
    return Check("layout", "conv3d weight [K,T,R,S,C] / input NDHWC", rel_err(got, direct), 1e-12,
                 float(np.max(np.abs(direct))))


def check_switch_explanation(b: Bundle, device: torch.device) -> Check:
    """The switch search must find one switch added to otherwise exact gradients, and take out all of it."""
    selected = b.outputs["selection"] > 0 if b.config["pooling"] != "soft" else None
    ref = run_twin(b, "fp64", device, selected, switch_tau=lambda outputs: 1e-2)
    effects = ref.switches.effects
    if effects.shape[0] == 0:
        return Check("switches", "finds an injected switch", float("inf"), 1e-6, note="no candidate within 1e-2")
    injected = int(effects.norm(dim=1).argmax())
    grads, offset = {}, 0
    for name, shape in zip(ref.grads, ref.param_shapes):
        size = int(np.prod(shape))
        part = effects[injected, offset:offset + size].double().cpu().view(shape)
        grads[name] = ref.grads[name] + twin.to_cpp_layout(part).numpy()
        offset += size
    print(f"switch self-check: injected {ref.switches.labels[injected]}")
    chosen, explained = explain_gradients(Bundle(b.config, b.params, b.buffers, b.x, b.mask, b.target, b.outputs, grads), ref)
    if chosen != [injected]:
        return Check("switches", "finds an injected switch", float("inf"), 1e-6, note=f"chose {chosen}, not [{injected}]")
    err = max(rel_err(grads[n] - explained[n], ref.grads[n]) for n in ref.grads if np.any(ref.grads[n]))
    return Check("switches", "finds an injected switch", err, 1e-6)


def mutated(b: Bundle, grads: Optional[Dict[str, np.ndarray]] = None,
            outputs: Optional[Dict[str, np.ndarray]] = None) -> Bundle:
    """A copy of the bundle with some gradients or outputs replaced."""
    return replace(b, grads={**b.grads, **(grads or {})}, outputs={**b.outputs, **(outputs or {})})


# Errors a reduced-precision path could make that no rounding explains; every one must fail the check.
GROSS_ERRORS = (
    ("every gradient x 2 (a loss scale not undone)",
     lambda b: mutated(b, grads={n: 2 * g for n, g in b.grads.items()})),
    ("grad head.instance_classifier.weight's sign",
     lambda b: mutated(b, grads={"head.instance_classifier.weight": -b.grads["head.instance_classifier.weight"]})),
    ("grads of encoder.layer4.1.bn2 weight and bias swapped",
     lambda b: mutated(b, grads={"encoder.layer4.1.bn2.weight": b.grads["encoder.layer4.1.bn2.bias"],
                                 "encoder.layer4.1.bn2.bias": b.grads["encoder.layer4.1.bn2.weight"]})),
    ("grad encoder.layer4.1.conv2.weight in PyTorch's layout [K,C,T,R,S]",
     lambda b: mutated(b, grads={"encoder.layer4.1.conv2.weight": np.ascontiguousarray(
         b.grads["encoder.layer4.1.conv2.weight"].transpose(0, 4, 1, 2, 3)).reshape(
         b.grads["encoder.layer4.1.conv2.weight"].shape)})),
    ("y1 of bag 0 moved by 0.25 max|y1|", lambda b: mutated(b, outputs={"y1": first_bag_moved(b.outputs["y1"], 0.25)})),
)


def first_bag_moved(y: np.ndarray, fraction: float) -> np.ndarray:
    moved = y.copy()
    moved[0] += fraction * np.abs(y).max()
    return moved


def check_gross_errors(b: Bundle, device: torch.device) -> List[Check]:
    """Each of GROSS_ERRORS applied to a bundle that passes must fail at least one tensor."""
    ref, natives, cpp_selected = reference_runs(b, device, with_native=True)
    tol = TOLERANCES[b.config["precision"]]
    checks = []
    for what, mutate in GROSS_ERRORS:
        results = compare(mutate(b), ref, natives, tol, cpp_selected)
        worst = max(results, key=lambda c: c.err / c.tol)
        caught = sum(1 for c in results if not c.passed)
        ratio = worst.err / worst.tol
        checks.append(Check("gross", what, 1.0 / ratio if ratio > 0 else float("inf"), 1.0,
                            note=f"err: 1 / the worst err over tol; caught by {caught} tensor(s), worst "
                                 f"{worst.name} at {ratio:.1f} x its limit"))
    return checks


def print_calibration(checks: List[Check], precision: str) -> None:
    """The stand-in's error over the farthest torch run's, per tensor: what ENSEMBLE_FACTOR must cover."""
    tol = TOLERANCES[precision]
    for title, groups, floor in (("outputs and buffers", ("output", "buffer"), tol.forward),
                                 ("gradients", ("grad",), tol.gradient)):
        rows = [c for c in checks if c.group in groups and c.native_err]
        if not rows:
            continue
        ratios = np.array([c.err / c.native_err for c in rows])
        worst = rows[int(ratios.argmax())]
        over_floor = [c.err / c.native_err for c in rows if c.err > floor]
        print(f"calibration {title}: stand-in (NCDHW) / farthest of {ENSEMBLE_RUNS} torch runs, {len(rows)} tensors: "
              f"median {np.median(ratios):.2f}, 99th percentile {np.percentile(ratios, 99):.2f}, "
              f"max {ratios.max():.2f} ({worst.name}); {len(over_floor)} over the floor {floor:.0e}"
              + (f", their max {max(over_floor):.2f}" if over_floor else "")
              + f" (ENSEMBLE_FACTOR is {ENSEMBLE_FACTOR:g})")


def self_test(args, device: torch.device) -> int:
    checks = [check_layout_convention()]
    root_context = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()
    with root_context as root:
        for repeat in range(args.seeds):
            for index, case in enumerate(SELF_TEST_CASES):
                path = Path(root) / f"seed{repeat}_case{index}_{case['pooling']}_{case['attention']}"
                bundle = self_test_bundle(case, args.precision, device, args.first_seed + 100 * repeat + index, args)
                write_bundle(path, bundle)
                bundle = read_bundle(path)
                if repeat == 0 and index == 0:
                    checks.append(check_switch_explanation(bundle, device))
                    checks += check_gross_errors(bundle, device)
                case_checks = check_bundle(bundle, device, with_native=args.precision != "fp32",
                                           switches=not args.no_switches)
                for c in case_checks:
                    c.name = f"seed{repeat}:case{index}:{c.name}"
                checks += case_checks
    print(f"self-test: the twin at {args.precision} stands in for the C++ side; reference float64")
    print_calibration(checks, args.precision)
    return summarize(checks, native_label(args.precision))


# ----------------------------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", help="bundle folder written by the C++ dumper (BUNDLE.md)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-native", action="store_true", help="skip the torch run at the bundle's precision")
    ap.add_argument("--no-switches", action="store_true",
                    help="fp32: no ReLU / max-pool switch analysis (see BUNDLE.md, 'Switches')")
    ap.add_argument("--switches-everywhere", action="store_true",
                    help="diagnostic: the switch analysis for tf32 / bf16 bundles too; their gradients are then judged "
                         "after the switches it picks (do the C++ gradients differ from float64 by switches alone?)")
    ap.add_argument("--self-test", action="store_true", help="write bundles from the twin itself and check them")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32", help="self-test: the stand-in's precision")
    ap.add_argument("--keep", help="self-test: write the bundles into this folder and keep them")
    ap.add_argument("--seeds", type=int, default=1, help="self-test: run the cases on this many seeds (calibration)")
    ap.add_argument("--first-seed", type=int, default=1000, help="self-test: seed of the first bundle")
    ap.add_argument("--depth", type=int, default=18, help="self-test model depth (cases may override)")
    ap.add_argument("--width", type=int, default=8, help="self-test model width")
    ap.add_argument("--bags", type=int, default=2)
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--size", type=int, default=32, help="self-test slab height and width")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    describe_environment(device)
    if args.self_test:
        return self_test(args, device)
    if not args.bundle:
        ap.error("give a BUNDLE_DIR or --self-test")
    try:
        bundle = read_bundle(Path(args.bundle))
        precision = bundle.config["precision"]
        print(f"bundle {args.bundle}: precision {precision}, tolerances forward {TOLERANCES[precision].forward:.0e}, "
              f"gradients {TOLERANCES[precision].gradient:.0e}; reference: this twin in float64 on {device}")
        checks = check_bundle(bundle, device, with_native=not args.no_native,
                              switches=not args.no_switches, switches_everywhere=args.switches_everywhere)
    except (BundleError, ValueError) as error:
        print(f"error: {error}")
        print("parity: 0 passed, 1 failed (worst: bundle rejected)")
        return 2
    return summarize(checks, native_label(precision))


if __name__ == "__main__":
    sys.exit(main())
