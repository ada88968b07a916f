# Runs a model written by `dsmil export FOLD_DIR|CHECKPOINT --format safetensors` in PyTorch, as a PyTorch user
# would: the twin's DualStreamMIL (twin.py) built from the file's __metadata__, its tensors loaded with the
# safetensors package (the state_dict names and PyTorch layouts the file holds), and p(HGG) of each case computed
# the way `dsmil predict` and `dsmil eval` do (apps/train/trainer.cpp predict_cases): one bag of the case's
# eval_instances `fixed` slabs of the preprocessed grid, no augmentation, evaluation mode (batch norm on its running
# statistics), p = softmax(y)[1].
# The cases are dsmil's preprocessed cache entries (`dsmil preprocess --index`), read and gathered by train.py.
"""Usage:
  predict_export.py MODEL.safetensors --index index.csv [--cases ID,ID,...] [--device cpu|cuda]
                    [--compare PREDICTIONS.csv [--column p_fold_0] [--tolerance 1e-4]]

Prints p(HGG) of each case (all cases of the index unless --cases) and its grade at the file's calibrated threshold.
--compare reads the p(HGG) dsmil gave the same cases (a CSV with case_id and the --column, e.g. the table of
`dsmil predict --run RUN --data DATA --out FILE`, whose p_fold_k columns are fold k's chosen model), prints both
with their difference and the largest, and exits 1 when that exceeds --tolerance. Exit status 2: a file that cannot
be read, or a model that does not fit the twin. On CUDA TF32 is off: dsmil's strict fp32 is the reference.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import struct
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402
import twin  # noqa: E402

EXPORT_FORMAT = "dsmil3d DualStreamMIL-3D weights"


def read_plain(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The safetensors layout read directly (u64 little-endian header length, JSON header, raw little-endian data),
    for a machine without the safetensors package; float32 tensors only, the only dtype `dsmil export` writes."""
    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + length])
    metadata = header.pop("__metadata__", {})
    body = memoryview(data)[8 + length:]
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {entry['dtype']}, this reader takes F32 only")
        begin, end = entry["data_offsets"]
        tensors[name] = torch.from_numpy(np.frombuffer(body[begin:end], dtype="<f4").reshape(entry["shape"]).copy())
    return tensors, metadata


def read_export(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], str]:
    """(tensors on the CPU, __metadata__, which reader read them)."""
    try:
        import safetensors
        from safetensors.torch import load_file
    except ImportError:
        tensors, metadata = read_plain(path)
        return tensors, metadata, "predict_export.py's own reader (the safetensors package is not installed)"
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata, f"safetensors {safetensors.__version__}"


def build_model(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str], device: torch.device) -> twin.DualStreamMIL:
    """The twin of the file's architecture holding its tensors, in evaluation mode. Every tensor of the file must
    have a place in the twin and every parameter and statistic of the twin a tensor (PyTorch's num_batches_tracked
    counters aside, which dsmil does not keep)."""
    if metadata.get("format") != EXPORT_FORMAT:
        raise ValueError(f"__metadata__ format '{metadata.get('format')}' is not '{EXPORT_FORMAT}'")
    for key, used in (("batch_norm_eps", twin.BN_EPS), ("batch_norm_momentum", twin.BN_MOMENTUM)):
        if not math.isclose(float(metadata[key]), used, rel_tol=1e-6):
            raise ValueError(f"the model's {key} is {metadata[key]}, the twin's {used}")
    model = twin.DualStreamMIL(twin.TwinConfig(**json.loads(metadata["model"])))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    problems = [f"{name} is not in the twin" for name in unexpected]
    problems += [f"{name} is missing" for name in missing if not twin.is_skipped_buffer(name)]
    if problems:
        raise ValueError("the file does not fit the twin:\n  " + "\n  ".join(problems))
    return model.to(device).eval()


@torch.no_grad()
def predict(model: twin.DualStreamMIL, metadata: Dict[str, str], cases: List[train.CaseData],
            device: torch.device) -> List[float]:
    """p(HGG) of each case from its evaluation bag (one bag a forward pass: in evaluation mode bags do not interact)."""
    slab_depth, instances = int(metadata["slab_depth"]), int(metadata["eval_instances"])
    grid = tuple(int(v) for v in metadata["grid"].split(","))
    for c in cases:
        if (c.header.depth, c.header.height, c.header.width) != grid:
            raise ValueError(f"case {c.case_id}: cache grid {c.header.depth}x{c.header.height}x{c.header.width}, "
                             f"the model's is {metadata['grid']}")
    cohort = train.ResidentCohort(cases, device)
    p_hgg = []
    for k in range(len(cases)):
        # `fixed` sampling draws nothing: no random generator.
        starts = train.sample_instances(cohort.slab_starts(k, slab_depth), instances, "fixed", None)
        x, mask = cohort.gather([k], [starts], instances, slab_depth, train.Augmentation.identity(1))
        out = model(twin.from_channels_last(x).contiguous(), mask)
        p_hgg.append(float(train.softmax_hgg(out["y"].float().cpu().numpy())[0]))
    return p_hgg


def read_column(path: Path, column: str) -> Dict[str, float]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"case_id", column} <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns case_id and {column}")
    return {row["case_id"]: float(row[column]) for row in rows}


def run(args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda":
        twin.set_tf32(False)
    tensors, metadata, reader = read_export(Path(args.model))
    model = build_model(tensors, metadata, device)
    index = train.read_index(Path(args.index))
    wanted = args.cases.split(",") if args.cases else list(index)
    unknown = [case_id for case_id in wanted if case_id not in index]
    if unknown:
        raise ValueError(f"{args.index}: no case {', '.join(unknown)}")
    cases = [train.read_case(case_id, *index[case_id]) for case_id in wanted]
    p_twin = predict(model, metadata, cases, device)

    threshold = float(metadata["threshold"]) if "threshold" in metadata else None
    print(f"model: {args.model} (epoch {metadata['epoch']} of {metadata['checkpoint']}), exported by dsmil "
          f"{metadata['dsmil_version']} ({metadata['dsmil_commit']}); read by {reader}; on {device}")
    print(f"threshold: {metadata['threshold_rule']}" if threshold is not None else
          "threshold: none in the file (the checkpoint carried no calibrated threshold)")
    reference = read_column(Path(args.compare), args.column) if args.compare else None
    if reference is not None:
        missing = [c.case_id for c in cases if c.case_id not in reference]
        if missing:
            raise ValueError(f"{args.compare}: no row for {', '.join(missing)}")
    print(f"{'case_id':<24} {'label':>5} {'p_twin':>12}" + (f" {'p_dsmil':>12} {'|difference|':>12}" if reference else "")
          + ("  grade" if threshold is not None else ""))
    worst = 0.0
    for case, p in zip(cases, p_twin):
        line = f"{case.case_id:<24} {case.label:>5} {p:>12.9f}"
        if reference is not None:
            difference = abs(p - reference[case.case_id])
            worst = max(worst, difference)
            line += f" {reference[case.case_id]:>12.9f} {difference:>12.3e}"
        if threshold is not None:
            line += f"  {'HGG' if p >= threshold else 'LGG'}"
        print(line)
    if reference is None:
        return 0
    passed = worst <= args.tolerance
    print(f"max |p_twin - p_dsmil| = {worst:.3e} over {len(cases)} cases (tolerance {args.tolerance:g}): "
          f"{'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a safetensors file of `dsmil export`")
    ap.add_argument("--index", required=True, help="CSV case_id,label,entry from `dsmil preprocess --index`")
    ap.add_argument("--cases", help="comma-separated case ids (default: every case of the index)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compare", help="CSV of dsmil's p(HGG) for the same cases")
    ap.add_argument("--column", default="p_fold_0", help="--compare's column of p(HGG) (default p_fold_0)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest |difference| that passes (default 1e-4)")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as error:
        print(f"predict_export.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
