#!/usr/bin/env python3
"""The convolution algorithms that several processes chose for the same problems, side by side.

Each SOURCE is a `dsmil bench --json-out` file (its "convolution_choices") or a fold's conv_algorithms.txt. Prints,
per source, how many problems it chose for and the sum of its chosen algorithms' timings over the problems all
sources share (one run of each distinct shape, not a step's total), then every shared problem whose cuDNN algorithm
or measured way differs between sources, with each source's choice.
Usage: scripts/conv_choices.py SOURCE SOURCE [...]
"""
import json
import re
import sys

CHOICE = re.compile(r"^cuDNN workspace [\d.]+ MiB(?: \(traded for time\))?: (.*) \(engine (\d+), ([\d.]+) ms")
MEASURED = re.compile(r"^(.*): (.+?) ([\d.]+) ms, (.+?) ([\d.]+) ms: (.+)$")


def read_lines(path):
    if path.endswith(".json"):
        return json.load(open(path)).get("convolution_choices", [])
    return [line.rstrip("\n") for line in open(path)]


def parse(path):
    """problem -> (description of the choice, its time in ms)"""
    choices = {}
    for line in read_lines(path):
        if m := CHOICE.match(line):
            choices["cudnn " + m.group(1)] = (f"engine {m.group(2)}", float(m.group(3)))
        elif m := MEASURED.match(line):
            kept = m.group(6)
            kept_ms = float(m.group(3)) if kept == m.group(2) else float(m.group(5))
            choices[f"{m.group(2)} or {m.group(4)}: {m.group(1)}"] = (kept, kept_ms)
    return choices


def main(paths):
    sources = {path: parse(path) for path in paths}
    shared = set.intersection(*(set(c) for c in sources.values()))
    for path, choices in sources.items():
        total = sum(choices[p][1] for p in shared if p.startswith("cudnn "))
        print(f"{path}: {len(choices)} choices; cuDNN's chosen timings over the {len(shared)} shared problems "
              f"sum to {total:.2f} ms")
    differing = [p for p in sorted(shared) if len({sources[s][p][0] for s in paths}) > 1]
    print(f"{len(differing)} shared problems chosen differently:")
    for problem in differing:
        print(f"  {problem}")
        for path in paths:
            what, ms = sources[path][problem]
            print(f"    {what:>24} {ms:8.3f} ms  {path}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:])
