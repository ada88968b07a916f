#!/usr/bin/env python3
"""Where one training step's GPU time goes: sums ncu's per-kernel durations of the step `dsmil bench
--profile` brackets, by kernel and by kind (hand-written kernels by their kernels/*.cu file, from
notes/KERNELS-PTXAS.md; library kernels as cuDNN, cuBLAS or CUB), against the step's measured wall time.

usage: profile_step.py NCU_CSV STEP_MS   (NCU_CSV from ncu --csv --print-units base --print-kernel-base
function --metrics gpu__time_duration.sum --profile-from-start off ... dsmil bench --profile)"""
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path


def kernel_files():
    files, current = defaultdict(set), None
    for line in (Path(__file__).resolve().parent.parent / "notes" / "KERNELS-PTXAS.md").read_text().splitlines():
        if line.startswith("## kernels/"):
            current = line[3:].strip()
        elif current and line.startswith("| `"):
            files[re.sub(r"<.*", "", line.split("`")[1]).strip()].add(current)
    return files


def kind_of(name, files):
    if name in files:
        return " / ".join(sorted(files[name]))
    lowered = name.lower()
    # cuDNN's convolutions are implicit GEMMs named by their pass; cuBLAS's products are plain GEMMs.
    if any(word in lowered for word in ("fprop", "dgrad", "wgrad", "implicit", "conv", "cudnn")):
        return "cuDNN (convolutions)"
    if "gemm" in lowered or "gemv" in lowered or "cublas" in lowered:
        return "cuBLAS (matrix products)"
    if lowered.startswith("cub") or "devicereduce" in lowered or "deviceradixsort" in lowered:
        return "CUB"
    return "other library kernels"


def main():
    csv_path, step_ms = sys.argv[1], float(sys.argv[2])
    with open(csv_path) as f:
        lines = [line for line in f if line.startswith('"')]
    per_kernel, launches = defaultdict(float), defaultdict(int)
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.sub(r"<.*", "", row["Kernel Name"]).strip()
        per_kernel[name] += float(row["Metric Value"].replace(",", "")) / 1e6
        launches[name] += 1
    if not per_kernel:
        sys.exit("profile_step.py: no gpu__time_duration.sum rows in " + csv_path)
    files = kernel_files()
    per_kind = defaultdict(float)
    for name, ms in per_kernel.items():
        per_kind[kind_of(name, files)] += ms
    total = sum(per_kernel.values())
    print(f"one training step: {sum(launches.values())} kernel launches, kernel time {total:.2f} ms, "
          f"step wall time {step_ms:.2f} ms (median of the timed steps, no profiler)")
    print(f"GPU busy {100 * total / step_ms:.0f}% of the step; the rest ({step_ms - total:.2f} ms) is the GPU "
          "waiting for the host (launches, synchronisations, host-side work)")
    print("\n| kind | ms | share of kernel time |\n| --- | --- | --- |")
    for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms:.3f} | {100 * ms / total:.1f}% |")
    print("\n| kernel | launches | ms | share |\n| --- | --- | --- | --- |")
    for name, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:20]:
        print(f"| `{name[:70]}` | {launches[name]} | {ms:.3f} | {100 * ms / total:.1f}% |")


main()
