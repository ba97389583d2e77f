#!/usr/bin/env python
"""The seed-to-seed spread of baseline runs: per (model, regime, head) and evaluation set, the mean and standard
deviation of top-1 over seeds. Writes OUT/seed_spread.json (read by scripts/collect_results.py --seed_spread, see
bgmask/reporting/claims.py) and OUT/seed_spread.md.

    python scripts/study/seed_spread.py runs/seeds/runs/* --out runs/seeds
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

from bgmask.reporting.claims import SEED_RULE, seed_spread
from bgmask.reporting.runs import load_runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", help="finished run folders of one configuration per regime, several seeds")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    runs = [r for d in args.run_dirs for r in load_runs(d)]
    entries = [((r.model_arch, r.regime, r.head, split), r.seed, value) for r in runs
               for split, value in (("cub", r.cub_top1), ("wb", r.wb_top1)) if value is not None]
    spread = seed_spread(entries)
    if not spread:
        print("error: no configuration has two or more seeds among the given runs", file=sys.stderr)
        return 2
    rows = [{"model_arch": k[0], "regime": k[1], "head": k[2], "split": k[3], **v} for k, v in spread.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"measured": datetime.date.today().isoformat(), "runs": sorted(args.run_dirs), "regimes": rows}
    (args.out / "seed_spread.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| model | regime | head | set | seeds | top-1 per seed | mean | sd | single-seed threshold "
             "(1.96·√2·sd) |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model_arch']} | {r['regime']} | {r['head']} | {r['split']} | {r['n']} | "
              f"{' / '.join(f'{v:.1f}' for v in r['values'])} | {r['mean']:.1f} | {r['sd']:.1f} | "
              f"{SEED_RULE * r['sd']:.1f} |" for r in rows]
    (args.out / "seed_spread.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
