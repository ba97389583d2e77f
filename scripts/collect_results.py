#!/usr/bin/env python
"""Collect classifier runs into a paper-style table and figure.

Example: python scripts/collect_results.py runs/demo/classifiers/* --out runs/demo
Writes OUT/results.md, results.csv, results.json and results.png (CUB vs Waterbirds accuracy per strategy).
"""

import argparse
import sys
from pathlib import Path

from bgmask.report import write_outputs
from bgmask.results import load_runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", help="run folders (each with results.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--note", default="", help="a line printed above the table (e.g. data set and date)")
    args = p.parse_args(argv)
    runs, skipped = [], []
    for run_dir in args.run_dirs:
        if not Path(run_dir).is_dir():
            continue
        try:
            runs.extend(load_runs(run_dir))
        except FileNotFoundError as e:
            skipped.append(str(e))
    for message in skipped:
        print(f"warning: skipped {message}", file=sys.stderr)
    if not runs:
        print("error: no finished runs (results.json) among the given folders", file=sys.stderr)
        return 2
    try:
        paths = write_outputs(runs, args.out, note=args.note)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
