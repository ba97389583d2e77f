#!/usr/bin/env python
"""Collect classifier runs into a paper-style table and figure.

Example: python scripts/collect_results.py runs/demo/classifiers/* --out runs/demo
Writes OUT/results.md, results.csv, results.json and results.png (CUB vs Waterbirds accuracy per strategy) for runs
of the paper's benchmark, and OUT/group_results.md, .csv and .png (worst group, adjusted and plain average) for runs
of a group-protocol benchmark (--dataset waterbirds or csv). Also OUT/claims.md and claims.json: every comparison the
result paragraphs rest on (the paper's three claims per table row, each method against the baseline in the group
protocol), with its 95 % interval and a verdict from one fixed rule (bgmask/reporting/claims.py). A single-seed
difference is judged against the seed spread of its regime, read from --seed_spread (default docs/seed_spread.json,
measured by scripts/study/seeds.sh).
"""

import sys
from pathlib import Path

from bgmask.infra.argparsing import parser_from_doc
from bgmask.reporting.claims import group_claims, load_spread, number, paper_claims, write_claims
from bgmask.reporting.outputs import write_group_outputs, write_outputs
from bgmask.reporting.runs import in_paper_table, load_runs

DEFAULT_SPREAD = Path(__file__).resolve().parents[1] / "docs" / "seed_spread.json"


def main(argv=None) -> int:
    p = parser_from_doc(__doc__)
    p.add_argument("run_dirs", nargs="+", help="run folders (each with results.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--note", default="", help="a line printed above the table (e.g. data set and date)")
    p.add_argument("--seed_spread", default=str(DEFAULT_SPREAD),
                   help="seed spread per regime for single-seed verdicts (default: %(default)s; none: no file)")
    args = p.parse_args(argv)
    entries, skipped = [], []
    for run_dir in args.run_dirs:
        if not Path(run_dir).is_dir():
            continue
        try:
            entries.extend(load_runs(run_dir))
        except FileNotFoundError as e:
            skipped.append(str(e))
    runs = [r for r in entries if in_paper_table(r)]  # scored on CUB's test set: the paper's table
    group_runs = [r for r in entries if not in_paper_table(r)]
    for message in skipped:
        print(f"warning: skipped {message}", file=sys.stderr)
    if not runs and not group_runs:
        print("error: no finished runs (results.json) among the given folders", file=sys.stderr)
        return 2
    paths = {}
    try:
        if runs:
            paths.update(write_outputs(runs, args.out, note=args.note))
        if group_runs:
            paths.update(write_group_outputs(group_runs, args.out))
        spread = load_spread(None if args.seed_spread == "none" else args.seed_spread)
        evidence = number(paper_claims(runs, spread) + group_claims(group_runs))
        paths.update(write_claims(evidence, args.out, "Claims, computed from the run folders", note=args.note))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ("md", "group_md", "claims_md"):
        if key in paths:
            print(paths[key].read_text())
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
