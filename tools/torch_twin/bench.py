# Times the PyTorch twin's training step (forward, loss, backward, AdamW, EMA) at DESIGN section 11's
# reference shape: B bags x n slabs of [4, S, H, W], ResNet-{10,18,34}-3D width w; one JSON line per mode.
"""Usage (one process per mode and run is the rule: torch.compile's step time differs between processes):
  bench.py --modes compile_bf16_cl --steps 100 --warmup 20 --json-out bench.jsonl --label run1

Modes are ENGINE_PRECISION[_cl]: ENGINE eager or compile, PRECISION fp32 (TF32 allowed in convolutions
and GEMMs) or bf16 (autocast, fp32 master weights), _cl channels_last_3d (else NCDHW). The default list
is the three of DESIGN section 11: eager_fp32, eager_bf16_cl, compile_bf16_cl.

The step: loss = mil_loss(model(x, mask)) in train mode (batch statistics); loss.backward(); fused AdamW
(decay on conv and linear weights only, as the C++); zero_grad; EMA of parameters and BN statistics with
torch._foreach_lerp_. Inputs: --input-sets sets of torch.randn slabs (fp32) and random labels, made on the
device before timing and taken in turn. Timing: CUDA events around each step after the warm-up; the
median, best, mean and p90 of the steps, and the wall time per step over all of them.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import twin  # noqa: E402

DEFAULT_MODES = "eager_fp32,eager_bf16_cl,compile_bf16_cl"


def parse_mode(mode: str):
    parts = mode.split("_")
    if len(parts) not in (2, 3) or parts[0] not in ("eager", "compile") or parts[1] not in ("fp32", "bf16") \
            or (len(parts) == 3 and parts[2] != "cl"):
        raise ValueError(f"mode '{mode}' is not ENGINE_PRECISION[_cl] with ENGINE eager|compile, PRECISION fp32|bf16")
    return parts[0] == "compile", parts[1] == "bf16", len(parts) == 3


class Ema:
    """theta_ema <- d theta_ema + (1 - d) theta, d = min(decay, (1 + k) / (10 + k)), over parameters and BN
    statistics (nn/optim.cpp), as one multi-tensor lerp."""

    def __init__(self, model: torch.nn.Module, decay: float):
        sources = [p for _, p in twin.cpp_parameters(model)] + [b for _, b in twin.cpp_buffers(model)]
        self.sources = [t.detach() for t in sources]
        self.shadow = [t.clone() for t in self.sources]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        torch._foreach_lerp_(self.shadow, self.sources, 1.0 - d)
        self.updates += 1


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW with decay on conv and linear weights only; fused (one kernel) or foreach (multi-tensor)."""
    flags = twin.weight_decay_flags(model)
    named = twin.cpp_parameters(model)
    groups = [
        {"params": [p for n, p in named if flags[n]], "weight_decay": weight_decay},
        {"params": [p for n, p in named if not flags[n]], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused, foreach=not fused)


def make_inputs(args, device, channels_last: bool, sets: int, generator: torch.Generator):
    out = []
    for _ in range(sets):
        x = torch.randn((args.bags * args.instances, args.slab, args.size, args.size, 4), generator=generator,
                        device=device)
        x = twin.from_channels_last(x)  # NCDHW sizes with channels_last_3d strides
        x = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x.contiguous()
        mask = torch.ones((args.bags, args.instances), dtype=torch.bool, device=device)
        target = torch.randint(0, 2, (args.bags,), generator=generator, device=device)
        out.append((x, mask, target))
    return out


def bench_mode(mode: str, args) -> dict:
    compiled, bf16, channels_last = parse_mode(mode)
    device = torch.device("cuda")
    torch.manual_seed(args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    cfg = twin.TwinConfig(depth=args.depth, width=args.width, slab_depth=args.slab, pooling=args.pooling,
                          topk=args.topk, attention=args.attention, focal_gamma=args.focal_gamma,
                          label_smoothing=args.label_smoothing, class_weight=(1.0, 1.0),
                          feature_dropout=args.feature_dropout, instance_dropout=args.instance_dropout,
                          drop_path=args.drop_path)
    model = twin.DualStreamMIL(cfg)
    twin.init_like_cpp(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    model.train()
    optimizer = adamw(model, args.lr, args.weight_decay, fused=True)
    optimizer_kind = "fused"
    ema = Ema(model, args.ema_decay)
    class_weight = torch.tensor(cfg.class_weight, dtype=torch.float32, device=device)
    inputs = make_inputs(args, device, channels_last, args.input_sets, generator)
    params = [p for _, p in twin.cpp_parameters(model)]

    def forward_loss(x, mask, target):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            return twin.mil_loss(model(x, mask), target, cfg, class_weight)

    loss_fn = torch.compile(forward_loss, mode=args.compile_mode) if compiled else forward_loss

    after_forward = [0]  # memory_allocated() once the last step's forward pass and loss are queued

    def step(x, mask, target):
        nonlocal optimizer, optimizer_kind
        loss = loss_fn(x, mask, target)
        after_forward[0] = torch.cuda.memory_allocated()
        loss.backward()
        if args.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip_grad_norm, foreach=True)
        try:
            optimizer.step()
        except RuntimeError as error:
            # Fused AdamW wants parameters, gradients and moments of one layout (pytorch issue 110758);
            # channels_last_3d weights with gradients of other strides break it: fall back, and say so.
            if optimizer_kind != "fused":
                raise
            print(f"note: {mode}: fused AdamW failed ({str(error).splitlines()[0]}); using foreach AdamW", flush=True)
            optimizer = adamw(model, args.lr, args.weight_decay, fused=False)
            optimizer_kind = "foreach"
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update()
        return loss

    torch.cuda.synchronize()
    start = time.perf_counter()
    loss = step(*inputs[0])
    torch.cuda.synchronize()
    first_step_s = time.perf_counter() - start
    for i in range(1, args.warmup):
        loss = step(*inputs[i % len(inputs)])
    torch.cuda.synchronize()
    peak_total = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps)]
    wall_start = time.perf_counter()
    for i in range(args.steps):
        starts[i].record()
        loss = step(*inputs[(args.warmup + i) % len(inputs)])
        ends[i].record()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - wall_start) * 1e3 / args.steps
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    final_loss = float(loss)
    if not math.isfinite(final_loss):
        raise RuntimeError(f"{mode}: the loss is {final_loss}")
    return {
        "mode": mode,
        "label": args.label,
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bags": args.bags, "instances": args.instances, "slab": args.slab, "size": args.size,
        "width": args.width, "depth": args.depth, "pooling": args.pooling, "attention": args.attention,
        "steps": args.steps, "warmup": args.warmup, "optimizer": optimizer_kind,
        "median_ms": statistics.median(times),
        "best_ms": times[0],
        "mean_ms": statistics.fmean(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "wall_ms_per_step": wall_ms,
        "slabs_per_s": args.bags * args.instances * 1e3 / statistics.median(times),
        "peak_alloc_mib": torch.cuda.max_memory_allocated() / 2**20,
        "peak_alloc_with_warmup_mib": max(peak_total, torch.cuda.max_memory_allocated()) / 2**20,
        "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
        "between_steps_mib": torch.cuda.memory_allocated() / 2**20,
        "after_forward_mib": after_forward[0] / 2**20,
        "first_step_s": first_step_s,
        "final_loss": final_loss,
    }


def print_table(rows: List[dict]) -> None:
    header = f"{'mode':18s} {'median ms':>10s} {'best ms':>9s} {'p90 ms':>8s} {'wall ms':>8s} {'slabs/s':>8s} " \
             f"{'peak MiB':>9s} {'first s':>8s}"
    print(header)
    for r in rows:
        print(f"{r['mode']:18s} {r['median_ms']:10.2f} {r['best_ms']:9.2f} {r['p90_ms']:8.2f} {r['wall_ms_per_step']:8.2f} "
              f"{r['slabs_per_s']:8.0f} {r['peak_alloc_mib']:9.0f} {r['first_step_s']:8.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated (default {DEFAULT_MODES})")
    ap.add_argument("--steps", type=int, default=100, help="timed steps")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation, cuDNN autotuning)")
    ap.add_argument("--bags", type=int, default=2)
    ap.add_argument("--instances", type=int, default=32)
    ap.add_argument("--slab", type=int, default=4, help="slices per slab S")
    ap.add_argument("--size", type=int, default=128, help="slab height = width")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=18, choices=sorted(twin.BLOCKS_PER_STAGE))
    ap.add_argument("--pooling", default="topk", choices=twin.POOLINGS)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--attention", default="gated", choices=twin.ATTENTIONS)
    ap.add_argument("--focal-gamma", type=float, default=2.0)
    ap.add_argument("--label-smoothing", type=float, default=0.2)
    ap.add_argument("--feature-dropout", type=float, default=0.0)
    ap.add_argument("--instance-dropout", type=float, default=0.0)
    ap.add_argument("--drop-path", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--clip-grad-norm", type=float, default=0.0, help="0: no clipping")
    ap.add_argument("--input-sets", type=int, default=4, help="random input sets taken in turn")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="", help="copied into each JSON line (e.g. the run number)")
    ap.add_argument("--json-out", help="append one JSON line per mode to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench.py needs a CUDA device")
        return 2
    if args.steps < 1 or args.warmup < 1 or args.input_sets < 1:
        ap.error("--steps, --warmup and --input-sets must be >= 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        parse_mode(mode)
    torch.backends.cudnn.benchmark = True
    twin.set_tf32(True)
    rows = []
    for mode in modes:
        row = bench_mode(mode, args)
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(line + "\n")
        torch.cuda.empty_cache()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
