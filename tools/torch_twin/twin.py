# PyTorch twin of dsmil3d's DualStreamMIL-3D and its loss (DESIGN sections 3-4), written from the C++
# (nn/resnet3d.cpp, mil/dual_stream.cpp, tensor/cpu/*): x[B*n, S, H, W, 4] channels-last slabs, bag-major
# -> logits y1, y2, y [B, 2]; parameter and buffer names are the C++ names (nn::Module::parameters()).
"""PyTorch twin of the dsmil3d model, for parity checks (parity.py) and benchmarks (bench.py).

Layouts: the C++ side keeps activations channels-last (NDHWC) and conv weights [K, T, R, S, C]; this twin
runs NCDHW modules (channels_last_3d memory format where wanted) and converts at the edges with
`to_cpp_layout` / `from_cpp_layout`. Linear weights are [out, in] on both sides.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

POOLINGS = ("max", "topk", "soft")
ATTENTIONS = ("dsmil", "gated")
BLOCKS_PER_STAGE = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass
class TwinConfig:
    """Architecture and loss settings; the names follow the bundle's config.json (BUNDLE.md)."""

    depth: int = 18
    width: int = 64
    slab_depth: int = 4
    in_channels: int = 4
    pooling: str = "topk"
    topk: int = 3
    attention: str = "gated"
    attention_temperature: float = 1.0
    query_size: int = 128
    tau: float = 1.0
    label_smoothing: float = 0.1
    focal_gamma: float = 0.0
    stream_weight: float = 0.5
    class_weight: Tuple[float, float] = (1.0, 1.0)
    # Training-time randomness; parity bundles have all three at 0 (the C++ masks are counter-based
    # and are not reproduced here), benchmarks may switch them on.
    feature_dropout: float = 0.0
    instance_dropout: float = 0.0
    drop_path: float = 0.0
    # Under bf16 autocast the C++ mixed precision makes only the encoder bf16 (nn/resnet3d.cpp: bf16 input,
    # convs, BN and pooling; fp32 pooled embedding); its head stays fp32. True autocasts the head too.
    bf16_head: bool = False

    def validate(self) -> None:
        if self.depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"depth {self.depth} is not one of 10, 18, 34")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling '{self.pooling}' is not one of {', '.join(POOLINGS)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention '{self.attention}' is not one of {', '.join(ATTENTIONS)}")
        if self.topk < 1:
            raise ValueError(f"topk {self.topk} must be >= 1")
        if not (self.attention_temperature > 0 and self.tau > 0):
            raise ValueError("attention_temperature and tau must be > 0")
        if len(self.class_weight) != 2:
            raise ValueError(f"class_weight {self.class_weight} must hold 2 values")

    @property
    def kernel_depth(self) -> int:
        return 3 if self.slab_depth >= 3 else 1

    @property
    def embedding_size(self) -> int:
        return 8 * self.width


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for reduced-precision tensors (the C++ reduces in fp32), the tensor's own dtype otherwise."""
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------------------------- encoder


class ConvBN(nn.Module):
    """conv (no bias) then batch norm, under the names `conv` and `bn` as in the C++ ("stem.conv",
    "downsample.bn", ...)."""

    def __init__(self, cin: int, cout: int, kernel, stride, padding):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """conv(kd,3,3)/(1,s,s) -> BN -> ReLU -> conv(kd,3,3) -> BN, (drop-path), + shortcut, ReLU. The shortcut
    is a 1x1x1 conv + BN ("downsample.conv" / "downsample.bn") when the stride or the width changes."""

    def __init__(self, cin: int, cout: int, stride_hw: int, kd: int, drop_path: float):
        super().__init__()
        pad = (kd // 2, 1, 1)
        # Attribute order = the C++ registration order: conv1, bn1, conv2, bn2, downsample.
        self.conv1 = nn.Conv3d(cin, cout, (kd, 3, 3), stride=(1, stride_hw, stride_hw), padding=pad, bias=False)
        self.bn1 = nn.BatchNorm3d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv3d(cout, cout, (kd, 3, 3), stride=1, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm3d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.downsample = (
            ConvBN(cin, cout, 1, (1, stride_hw, stride_hw), 0) if stride_hw != 1 or cin != cout else None
        )
        # A module (no parameters) rather than F.relu, so that parity.py can hook every ReLU.
        self.relu = nn.ReLU()
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.training and self.drop_path > 0.0:
            keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= self.drop_path
            branch = branch * keep.to(branch.dtype) / (1.0 - self.drop_path)
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.relu(branch + shortcut)


class ResNet3D(nn.Module):
    """x[N, 4, S, H, W] -> h[N, 8w]: stem conv (kd,7,7)/(1,2,2) pad (kd//2,3,3) -> BN -> ReLU -> max pool
    (1,3,3)/(1,2,2) pad (0,1,1); four stages of BasicBlocks; global average pool over (S, h, w)."""

    def __init__(self, cfg: TwinConfig):
        super().__init__()
        kd = cfg.kernel_depth
        self.stem = ConvBN(cfg.in_channels, cfg.width, (kd, 7, 7), (1, 2, 2), (kd // 2, 3, 3))
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        stages = BLOCKS_PER_STAGE[cfg.depth]
        total = sum(stages)
        index = 0
        cin = cfg.width
        for stage, count in enumerate(stages):
            cout = cfg.width << stage
            blocks = []
            for b in range(count):
                # Stochastic depth grows linearly from 0 at the first block to drop_path at the last.
                p = cfg.drop_path * index / (total - 1) if total > 1 else cfg.drop_path
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1, kd, p))
                cin = cout
                index += 1
            setattr(self, f"layer{stage + 1}", nn.ModuleList(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.relu(self.stem(x)))
        for stage in range(1, 5):
            for block in getattr(self, f"layer{stage}"):
                h = block(h)
        # The C++ global average pool returns fp32 whatever its input (bf16 activations included).
        return h.mean(dim=(2, 3, 4), dtype=accumulation_dtype(h.dtype))


# ----------------------------------------------------------------------------------------------- MIL head


def masked_softmax(e: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """a[b, i] = softmax over the unmasked i of e[b, i] / T; masked entries are 0 (every bag keeps one)."""
    e = e.to(accumulation_dtype(e.dtype)) / temperature
    return torch.softmax(e.masked_fill(~mask, float("-inf")), dim=1)


def topk_selection(z: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Stream-1 weights [B, n]: 1/K_b on the K_b = min(k, unmasked) unmasked instances of largest z (ties
    to the lower index, as the C++ stable sort), 0 elsewhere. Not differentiable (the choice is discrete)."""
    bags, n = z.shape
    scores = z.detach().masked_fill(~mask, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    k_per_bag = mask.sum(dim=1).clamp(max=k).to(accumulation_dtype(z.dtype))
    rank = torch.arange(n, device=z.device, dtype=k_per_bag.dtype)
    weight_by_rank = (rank[None, :] < k_per_bag[:, None]).to(k_per_bag.dtype) / k_per_bag[:, None]
    return torch.zeros_like(weight_by_rank).scatter(1, order, weight_by_rank)


def selection_from_indicator(selected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Stream-1 weights 1/K_b from a given [B, n] bool indicator of the selected instances (parity runs
    take the C++ side's discrete choice, see parity.py)."""
    weight = selected.to(dtype)
    return weight / weight.sum(dim=1, keepdim=True)


def drop_instances(mask: torch.Tensor, p: float) -> torch.Tensor:
    """Instance dropout: each unmasked instance leaves its bag with probability p; a bag that would lose
    every instance keeps its first unmasked one (as the C++ drop_instances)."""
    kept = mask & (torch.rand(mask.shape, device=mask.device) >= p)
    emptied = kept.sum(dim=1) == 0
    positions = torch.arange(mask.shape[1], device=mask.device)
    first = positions[None, :] == mask.float().argmax(dim=1)[:, None]
    return kept | (first & emptied[:, None])


class DualStreamHead(nn.Module):
    """h[B*n, F] -> y1 (instance classifier + max/top-k/soft pooling on the margin z = c1 - c0), y2 (attention
    over v_i = ReLU(W_v h_i + b_v) with DSMIL critical-query or gated scores), y = (y1 + y2) / 2."""

    def __init__(self, features: int, cfg: TwinConfig):
        super().__init__()
        self.cfg = cfg
        qs = cfg.query_size
        # Attribute order = the C++ registration order. The critical query (q1, q2) exists for DSMIL
        # attention only, the gate (gate_V, gate_U, gate_w) for gated attention only.
        self.instance_classifier = nn.Linear(features, 2)
        self.v = nn.Linear(features, features)
        self.bag_classifier = nn.Linear(features, 2)
        if cfg.attention == "dsmil":
            self.q1 = nn.Linear(features, qs)
            self.q2 = nn.Linear(qs, qs)
        else:
            self.gate_V = nn.Linear(features, qs)
            self.gate_U = nn.Linear(features, qs)
            self.gate_w = nn.Linear(qs, 1)
        self.relu = nn.ReLU()

    def forward(
        self,
        h: torch.Tensor,
        mask: torch.Tensor,
        tau: Optional[float] = None,
        selected: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """mask[B, n] bool; `selected` [B, n] bool overrides the max/top-k choice (parity only)."""
        cfg = self.cfg
        bags, n = mask.shape
        features = h.shape[1]
        tau = cfg.tau if tau is None else tau
        if self.training and cfg.instance_dropout > 0.0:
            mask = drop_instances(mask, cfg.instance_dropout)
        if self.training and cfg.feature_dropout > 0.0:
            h = F.dropout(h, cfg.feature_dropout, training=True)

        # Stream 1: instance classifier, pooling by the margin z_i = c_i1 - c_i0.
        c = self.instance_classifier(h).view(bags, n, 2)
        z = c[..., 1] - c[..., 0]
        if cfg.pooling == "soft":
            s = masked_softmax(z, mask, tau)
        elif selected is not None:
            s = selection_from_indicator(selected, accumulation_dtype(z.dtype))
        else:
            s = topk_selection(z, mask, 1 if cfg.pooling == "max" else cfg.topk)
        y1 = (s[..., None] * c).sum(dim=1)

        # Stream 2: attention over the bag's instances, b = sum_i a_i v_i. DSMIL's critical query is the
        # stream-1 pooling of q (q_m, mean over the top K, or sum_i s_i q_i), not detached.
        if cfg.attention == "dsmil":
            q = torch.tanh(self.q2(self.relu(self.q1(h)))).view(bags, n, cfg.query_size)
            critical_query = (s[..., None] * q).sum(dim=1)
            e = (q * critical_query[:, None, :]).sum(dim=2) / math.sqrt(cfg.query_size)
        else:
            gated = torch.tanh(self.gate_V(h)) * torch.sigmoid(self.gate_U(h))
            e = self.gate_w(gated).view(bags, n)
        a = masked_softmax(e, mask, cfg.attention_temperature)
        v = self.relu(self.v(h)).view(bags, n, features)
        y2 = self.bag_classifier((a[..., None] * v).sum(dim=1))
        y = (y1 + y2) * 0.5
        return {"y1": y1, "y2": y2, "y": y, "margins": z, "attention": a, "selection": s, "mask": mask}


class DualStreamMIL(nn.Module):
    """The whole model under the C++ names: `encoder.*` (ResNet3D) and `head.*` (DualStreamHead)."""

    def __init__(self, cfg: TwinConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = ResNet3D(cfg)
        self.head = DualStreamHead(cfg.embedding_size, cfg)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        tau: Optional[float] = None,
        selected: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """x[B*n, 4, S, H, W] (NCDHW sizes, any memory format; see from_channels_last), mask[B, n] bool."""
        if x.dim() != 5 or x.shape[0] != mask.numel():
            raise ValueError(f"x {tuple(x.shape)} must hold B*n = {mask.numel()} slabs [4, S, H, W]")
        h = self.encoder(x)
        with torch.autocast(device_type=h.device.type, enabled=False) if not self.cfg.bf16_head else nullcontext():
            out = self.head(h, mask, tau, selected)
        out["h"] = h
        return out


def from_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Our input x[N, S, H, W, C] as an NCDHW-sized view; its strides are channels_last_3d (no copy)."""
    return x.permute(0, 4, 1, 2, 3)


# ----------------------------------------------------------------------------------------------- loss


def focal_loss_per_sample(logits: torch.Tensor, target: torch.Tensor, eps: float, gamma: float) -> torch.Tensor:
    """l_b = -sum_c q_c (1 - p_c)^gamma log p_c, q_c = (1 - eps)[c = t] + eps / C, one value per row of logits."""
    logits = logits.to(accumulation_dtype(logits.dtype))
    classes = logits.shape[1]
    log_p = F.log_softmax(logits, dim=1)
    is_target = torch.arange(classes, device=logits.device)[None, :] == target[:, None]
    q = is_target.to(logits.dtype) * (1.0 - eps) + eps / classes
    if gamma == 0.0:
        return -(q * log_p).sum(dim=1)
    p = log_p.exp()
    # 1 - p_c as the sum of the other classes' p (the C++ form, exact as p_c -> 1); 2 classes here.
    rest = p.flip(1) if classes == 2 else 1.0 - p
    return -(q * rest.pow(gamma) * log_p).sum(dim=1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float, gamma: float) -> torch.Tensor:
    """sum_b w_b l_b / sum_b w_b with l_b of focal_loss_per_sample."""
    per_sample = focal_loss_per_sample(logits, target, eps, gamma)
    weight = weight.to(per_sample.dtype)
    return (weight * per_sample).sum() / weight.sum()


def mil_loss(out: Dict[str, torch.Tensor], target: torch.Tensor, cfg: TwinConfig,
             class_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """lambda L(y1) + (1 - lambda) L(y2), each L weighted by alpha_t = class_weight[t] (DESIGN section 4).
    class_weight: cfg.class_weight as a tensor on target's device; pass it in hot loops (a host-to-device
    copy of a fresh tensor would wait for the device)."""
    if class_weight is None:
        class_weight = torch.tensor(cfg.class_weight, dtype=torch.float64, device=target.device)
    weight = class_weight[target.long()]
    l1 = focal_loss(out["y1"], target, weight, cfg.label_smoothing, cfg.focal_gamma)
    l2 = focal_loss(out["y2"], target, weight, cfg.label_smoothing, cfg.focal_gamma)
    return cfg.stream_weight * l1 + (1.0 - cfg.stream_weight) * l2


# ----------------------------------------------------------------------------------------------- numerics switches


def has_setting(holder, name: str) -> bool:
    """hasattr for torch.backends holders, some of which raise AssertionError for unknown names."""
    try:
        getattr(holder, name)
        return True
    except (AttributeError, AssertionError):
        return False


def set_tf32(enabled: bool) -> None:
    """TF32 in cuDNN convolutions and cuBLAS GEMMs (fp32 tensors only), through the PyTorch >= 2.9 API where
    it exists (mixing it with the legacy allow_tf32 flags raises there), else the legacy flags."""
    backends = torch.backends
    if has_setting(backends.cuda.matmul, "fp32_precision"):
        value = "tf32" if enabled else "ieee"
        backends.cuda.matmul.fp32_precision = value
        for holder in (backends.cudnn, getattr(backends.cudnn, "conv", None), getattr(backends.cudnn, "rnn", None)):
            if holder is not None and has_setting(holder, "fp32_precision"):
                holder.fp32_precision = value
    else:
        backends.cuda.matmul.allow_tf32 = enabled
        backends.cudnn.allow_tf32 = enabled


# ----------------------------------------------------------------------------------------------- names, layouts, init


def is_skipped_buffer(name: str) -> bool:
    """PyTorch's BN step counter has no C++ counterpart (momentum 0.1 never reads it)."""
    return name.endswith("num_batches_tracked")


def cpp_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """(C++ name, parameter) in the C++ order: a module's own parameters, then its children's in order."""
    return list(model.named_parameters())


def cpp_buffers(model: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    return [(name, b) for name, b in model.named_buffers() if not is_skipped_buffer(name)]


def weight_decay_flags(model: nn.Module) -> Dict[str, bool]:
    """AdamW decays conv and linear weights, never biases or batch-norm parameters (nn/layers.cpp)."""
    flags = {}
    for module_name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            flags[full] = isinstance(module, (nn.Conv3d, nn.Linear)) and pname == "weight"
    return flags


def to_cpp_layout(t: torch.Tensor) -> torch.Tensor:
    """Conv weights [K, C, T, R, S] -> [K, T, R, S, C]; everything else unchanged."""
    return t.permute(0, 2, 3, 4, 1) if t.dim() == 5 else t


def from_cpp_layout(t: torch.Tensor) -> torch.Tensor:
    """Conv weights [K, T, R, S, C] -> [K, C, T, R, S]; everything else unchanged."""
    return t.permute(0, 4, 1, 2, 3) if t.dim() == 5 else t


def cpp_shape(t: torch.Tensor) -> Tuple[int, ...]:
    return tuple(to_cpp_layout(t).shape)


@torch.no_grad()
def load_cpp_tensors(model: nn.Module, params: Dict[str, torch.Tensor], buffers: Dict[str, torch.Tensor]) -> None:
    """Copies C++-layout tensors into the model. Every C++ name must be present, no extra one, shapes equal."""
    problems = []
    for kind, given, own in (("parameter", params, cpp_parameters(model)), ("buffer", buffers, cpp_buffers(model))):
        own_names = {name for name, _ in own}
        problems += [f"{kind} {name} is not in the twin" for name in sorted(set(given) - own_names)]
        for name, target in own:
            if name not in given:
                problems.append(f"{kind} {name} is missing")
            elif tuple(given[name].shape) != cpp_shape(target):
                problems.append(f"{kind} {name}: shape {tuple(given[name].shape)}, the twin wants {cpp_shape(target)}")
            else:
                target.copy_(from_cpp_layout(given[name].to(target.device, target.dtype)))
    if problems:
        raise ValueError("the tensors do not fit the twin:\n  " + "\n  ".join(problems))


@torch.no_grad()
def init_like_cpp(model: nn.Module, generator: Optional[torch.Generator] = None, perturb_bn: bool = False) -> None:
    """The C++ initial distributions (nn/layers.cpp): conv Kaiming-normal (fan-out, ReLU gain); Linear
    U(-1/sqrt(in), 1/sqrt(in)) for weight and bias; BN weight 1, bias 0, running mean 0, var 1. With
    perturb_bn, BN parameters and statistics are randomised instead, so that a swapped name or a wrong
    running-statistics update cannot hide behind 1s and 0s."""
    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=generator, dtype=torch.float64) * (high - low) + low)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=generator, dtype=torch.float64) * std + mean)

    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            fan_out = module.out_channels * math.prod(module.kernel_size)
            normal(module.weight, math.sqrt(2.0 / fan_out))
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)
            uniform(module.weight, -bound, bound)
            uniform(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm3d):
            if perturb_bn:
                uniform(module.weight, 0.5, 1.5)
                normal(module.bias, 0.2)
                normal(module.running_mean, 0.1)
                uniform(module.running_var, 0.5, 2.0)
            else:
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
            module.num_batches_tracked.zero_()


def config_from_bundle(cfg: dict) -> TwinConfig:
    """TwinConfig from a bundle's config.json (keys in BUNDLE.md); dropouts are 0 in parity bundles."""
    tc = TwinConfig(
        depth=int(cfg["depth"]),
        width=int(cfg["width"]),
        slab_depth=int(cfg["slab_depth"]),
        pooling=str(cfg["pooling"]),
        topk=int(cfg["topk"]),
        attention=str(cfg["attention"]),
        attention_temperature=float(cfg["attention_temperature"]),
        query_size=int(cfg.get("query_size", 128)),
        tau=float(cfg["tau"]),
        label_smoothing=float(cfg["label_smoothing"]),
        focal_gamma=float(cfg["focal_gamma"]),
        stream_weight=float(cfg["stream_weight"]),
        class_weight=(float(cfg["class_weight"][0]), float(cfg["class_weight"][1])),
    )
    tc.validate()
    return tc
