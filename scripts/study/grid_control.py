#!/usr/bin/env python
r"""The grid study's control, analysed: late masking at one input size with the grid varied alone (the mask placed
before the last 0, 1 or 2 ConvNeXt stages), against the baseline and against each other, seeds paired. Writes
OUT/claims.md and claims.json (the verdict rule of bgmask/reporting/claims.py) and prints the table.

    python scripts/study/grid_control.py runs/seeds/runs/convnext_*_baseline_s* runs/grid_control/runs/* \
        --out runs/grid_control
"""

import argparse
import sys
from pathlib import Path

from bgmask.reporting.claims import Measure, compare, number, write_claims
from bgmask.reporting.runs import load_runs

GRIDS = {"last": "2x2", "second_last": "4x4", "third_last": "8x8"}  # ConvNeXt-atto at 64 px
CLAIM_WB = "5. At one input size, late masking beats the baseline on Waterbirds (grid varied alone)"
CLAIM_FINER = "6. At one input size, a finer grid raises late masking's Waterbirds accuracy"
CLAIM_CUB = "7. At one input size, late masking costs CUB accuracy (a − b < 0)"


def measures(runs, split: str) -> list[Measure]:
    return [Measure(r.seed, getattr(r, f"{split}_top1"), getattr(r, f"{split}_correct"), getattr(r, f"{split}_images"),
                    r.run_dir) for r in runs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    cells: dict[tuple[str, str], list] = {}
    for d in args.run_dirs:
        for r in load_runs(d):
            grid = "baseline" if r.masking == "none" else GRIDS.get(r.variant, r.variant)
            cells.setdefault((r.regime, grid), []).append(r)
    evidence = []
    for regime in sorted({k[0] for k in cells}):
        base = cells.get((regime, "baseline"), [])
        grids = [g for g in GRIDS.values() if (regime, g) in cells]
        for g in grids:
            evidence.append(compare(CLAIM_WB, f"{regime}: late {g} − baseline", measures(cells[(regime, g)], "wb"),
                                    measures(base, "wb")))
        for fine, coarse in ((b, a) for i, a in enumerate(grids) for b in grids[i + 1:]):
            evidence.append(compare(CLAIM_FINER, f"{regime}: late {fine} − late {coarse}",
                                    measures(cells[(regime, fine)], "wb"), measures(cells[(regime, coarse)], "wb")))
        for g in grids:
            evidence.append(compare(CLAIM_CUB, f"{regime}: late {g} − baseline, CUB",
                                    measures(cells[(regime, g)], "cub"), measures(base, "cub"), direction=-1))
    if not evidence:
        print("error: no late-masking runs among the given folders", file=sys.stderr)
        return 2
    seeds = sorted({r.seed for runs in cells.values() for r in runs})
    paths = write_claims(number(evidence, prefix="G"), args.out, "Grid control: the grid varied alone",
                         note=f"ConvNeXt-atto at 64 px, the demo's data, weights and recipe, ground-truth masks; "
                              f"seeds {', '.join(map(str, seeds))} (paired). Synthetic benchmark.")
    print(paths["claims_md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
