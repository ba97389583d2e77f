"""Claims computed from run folders: every comparison a result paragraph rests on, with its interval and a verdict.

The verdict rule (fixed, the same for every claim; ``direction`` is the sign the claim asserts):

* **holds**: the 95 % interval of the difference excludes 0 on the claimed side, and a single-seed difference also
  exceeds what two seeds of the same configuration differ by (below);
* **direction only**: the point estimate has the claimed sign, the interval includes 0 (or the seed rule is not met);
* **does not hold**: the point estimate is 0 or has the other sign;
* **not evaluated**: a run the comparison needs is missing.

Intervals: with the same seeds on both sides (two or more), the seed-paired differences' mean with a t interval
(``t_{0.975, n-1} · sd / sqrt(n)``); with one seed, Newcombe's interval for two proportions on the test images
(:func:`bgmask.data.groups.difference_interval`). One seed's binomial interval leaves out the seed-to-seed spread,
so a single-seed difference is *holds* only when it also exceeds ``1.96 · sqrt(2) · sd``, the range within which two
seeds of one configuration differ 95 % of the time, with ``sd`` the measured seed spread of that regime
(``scripts/study/seeds.sh``); where none was measured, a single-seed difference is at most *direction only*. A
change of a gain between two settings (:func:`compare_change`, e.g. late masking's gain at two grid sizes) is judged
the same way, with the two Newcombe intervals combined by MOVER and ``1.96 · 2 · sd`` as its seed threshold.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bgmask.data.groups import difference_interval
from bgmask.models import heads as head_names

VERDICTS = ("holds", "direction only", "does not hold", "not evaluated")
# t_{0.975, df} for df = 1..30 (beyond: 1.96).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
SEED_RULE = 1.959964 * math.sqrt(2)  # a difference of two runs: two runs' seed noise
CHANGE_SEED_RULE = 1.959964 * 2  # a change of a difference between two settings: four runs'


@dataclass
class Measure:
    """One run's value of the compared metric (points), with its counts when it is a proportion."""

    seed: int | None
    value: float
    correct: float | None = None
    total: float | None = None
    run: str = ""


@dataclass
class Evidence:
    """One comparison: ``a - b`` on a metric, in the claimed direction, and its verdict."""

    claim: str  # the claim it tests (its number and statement)
    label: str  # what is compared
    direction: int  # +1: the claim says a > b; -1: a < b
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    seeds: int = 0
    method: str = ""
    verdict: str = "not evaluated"
    note: str = ""
    runs: list[str] = field(default_factory=list)
    id: str = ""

    def cell(self) -> str:
        if self.difference is None:
            return "–"
        return f"{self.difference:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


def t975(df: int) -> float:
    return T975[df - 1] if df <= len(T975) else 1.959964


def compare(claim: str, label: str, a: list[Measure], b: list[Measure], direction: int = 1,
            spread_sd: float | None = None) -> Evidence:
    """The evidence for ``a - b`` having sign ``direction`` (see the module docstring for the rule)."""
    return _difference(Evidence(claim, label, direction), (a, b), spread_sd)


def compare_change(claim: str, label: str, fine: tuple[list[Measure], list[Measure]],
                   coarse: tuple[list[Measure], list[Measure]], direction: int = 1,
                   spread_sd: float | None = None) -> Evidence:
    """The evidence for a gain changing between two settings: ``(a_fine - b_fine) - (a_coarse - b_coarse)`` having
    sign ``direction``, each setting with its own runs and test images (e.g. two grid sizes).

    Seeds paired on all four sides (two or more): a t interval over the per-seed changes. One seed: the two gains'
    Newcombe intervals combined by MOVER (Zou & Donner 2008, the square-root rule for a difference of two
    independent estimates); the seed rule compares the change with ``1.96 · 2 · sd``, since four runs' seed noise
    enters it (``sqrt(4)`` where a plain difference has ``sqrt(2)``)."""
    return _difference(Evidence(claim, label, direction), (*fine, *coarse), spread_sd)


def _difference(ev: Evidence, sides: tuple[list[Measure], ...], spread_sd: float | None) -> Evidence:
    """``sides[0] - sides[1]`` (two sides) or ``(sides[0] - sides[1]) - (sides[2] - sides[3])`` (four), judged."""
    names = ("a", "b") if len(sides) == 2 else ("a (fine)", "b (fine)", "a (coarse)", "b (coarse)")
    ev.runs = sorted({m.run for ms in sides for m in ms if m.run})
    if not all(sides):
        ev.note = "missing: " + " and ".join(name for name, ms in zip(names, sides) if not ms)
        return ev
    by_seed = [{m.seed: m for m in ms} for ms in sides]
    seeds = sorted(set.intersection(*(set(s) for s in by_seed)), key=lambda s: (s is None, s))
    sign = (1, -1, -1, 1)[:len(sides)]
    if len(seeds) >= 2:
        diffs = [sum(k * side[s].value for k, side in zip(sign, by_seed)) for s in seeds]
        mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
        ev.difference, ev.low, ev.high = mean, mean - half, mean + half
        ev.seeds, ev.method = len(diffs), f"t over {len(diffs)} paired seeds"
        return _judge(ev, excludes=ev.low > 0 if ev.direction > 0 else ev.high < 0, seed_rule_met=True)
    ms = [side[seeds[0]] for side in by_seed] if seeds else [side[0] for side in sides]
    ev.seeds = 1
    if any(m.correct is None or not m.total for m in ms):
        ev.difference = ev.low = ev.high = sum(k * m.value for k, m in zip(sign, ms))
        ev.method, ev.note = "single seed, no counts", "no interval: counts missing"
        excludes = False
    else:
        gains = [difference_interval(a.correct, a.total, b.correct, b.total) for a, b in zip(ms[::2], ms[1::2])]
        if len(gains) == 1:
            (ev.difference, ev.low, ev.high), ev.method = gains[0], "Newcombe, single seed"
        else:
            (f, fl, fh), (c, cl, ch) = gains
            ev.difference = f - c
            ev.low, ev.high = ev.difference - math.hypot(f - fl, ch - c), ev.difference + math.hypot(fh - f, c - cl)
            ev.method = "MOVER of two Newcombe intervals, single seed"
        excludes = ev.low > 0 if ev.direction > 0 else ev.high < 0
    if spread_sd is None:
        ev.note = ev.note or "single seed and no seed spread measured for this regime"
        return _judge(ev, excludes, seed_rule_met=False)
    threshold = (SEED_RULE if len(sides) == 2 else CHANGE_SEED_RULE) * spread_sd
    seed_rule_met = abs(ev.difference) > threshold
    if excludes and not seed_rule_met:
        rule = "1.96·√2·sd" if len(sides) == 2 else "1.96·2·sd"
        ev.note = f"within the seed spread (|d| ≤ {threshold:.1f} = {rule}, sd {spread_sd:.1f})"
    return _judge(ev, excludes, seed_rule_met)


def _judge(ev: Evidence, excludes: bool, seed_rule_met: bool) -> Evidence:
    if ev.direction * ev.difference <= 0:
        ev.verdict = "does not hold"
    elif excludes and seed_rule_met:
        ev.verdict = "holds"
    else:
        ev.verdict = "direction only"
    return ev


def seed_spread(entries: list[tuple[tuple, int, float]]) -> dict[tuple, dict]:
    """``{key: {"mean", "sd", "n", "values"}}`` over seeds from ``(key, seed, value)`` triples (keys with ≥ 2
    seeds)."""
    grouped: dict[tuple, dict[int, float]] = {}
    for key, seed, value in entries:
        grouped.setdefault(key, {})[seed] = value
    return {key: {"mean": statistics.fmean(v.values()), "sd": statistics.stdev(v.values()), "n": len(v),
                  "values": [v[s] for s in sorted(v)]}
            for key, v in grouped.items() if len(v) >= 2}


def summary(evidence: list[Evidence]) -> dict[str, dict[str, int]]:
    """Per claim: how many comparisons got each verdict."""
    out: dict[str, dict[str, int]] = {}
    for ev in evidence:
        counts = out.setdefault(ev.claim, dict.fromkeys(VERDICTS, 0))
        counts[ev.verdict] += 1
    return out


def to_markdown(evidence: list[Evidence], title: str, note: str = "") -> str:
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["Verdict rule: *holds* — the 95 % interval of the difference excludes 0 on the claimed side (a "
              "single seed must also exceed 1.96·√2 × the regime's seed spread); *direction only* — the point "
              "estimate has the claimed sign; *does not hold* — it does not. Differences in points (a − b)."
              + (" A change of a gain between two settings is judged the same way, with the two gains' intervals "
                 "combined by MOVER and 1.96·2 × the seed spread as a single seed's threshold."
                 if any(ev.method.startswith("MOVER") for ev in evidence) else ""), ""]
    for claim, counts in summary(evidence).items():
        tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        lines += [f"## {claim}", "", f"Verdicts: {tally}.", "",
                  "| id | comparison | a − b [95 % interval] | seeds | method | verdict | note |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {ev.id} | {ev.label} | {ev.cell()} | {ev.seeds} | {ev.method} | **{ev.verdict}** | {ev.note} |"
                  for ev in evidence if ev.claim == claim]
        lines.append("")
    return "\n".join(lines)


def number(evidence: list[Evidence], prefix: str = "C") -> list[Evidence]:
    """Stable ids: ``C<claim number>.<k>`` in order of appearance (claims are titled ``"<n>. ..."``)."""
    counters: dict[str, int] = {}
    for ev in evidence:
        n = ev.claim.split(".", 1)[0]
        counters[n] = counters.get(n, 0) + 1
        ev.id = f"{prefix}{n}.{counters[n]}"
    return evidence


def write_claims(evidence: list[Evidence], out_dir: str | os.PathLike, title: str, note: str = "") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"claims_md": out / "claims.md", "claims_json": out / "claims.json"}
    tmp_md, tmp_json = paths["claims_md"].with_suffix(".md.tmp"), paths["claims_json"].with_suffix(".json.tmp")
    tmp_md.write_text(to_markdown(evidence, title, note))
    tmp_json.write_text(json.dumps({"title": title, "summary": summary(evidence),
                                    "comparisons": [asdict(ev) for ev in evidence]}, indent=2) + "\n")
    os.replace(tmp_md, paths["claims_md"])
    os.replace(tmp_json, paths["claims_json"])
    return paths


# ------------------------------------------------------------------------------ the claims of the paper's tables
CLAIM_OOD = "1. Masking beats the baseline out of distribution (Waterbirds top-1)"
CLAIM_EARLY = "2. Early masking is the best strategy out of distribution (Waterbirds top-1)"
CLAIM_GAP = "3. Among ViT heads, GAP with early masking is the most robust (Waterbirds top-1)"
CLAIM_GROUPS = "4. A method raises the worst group over the baseline (group protocol, test split)"


def wb_measures(runs) -> list[Measure]:
    return [Measure(r.seed, r.wb_top1, r.wb_correct, r.wb_images, r.run_dir) for r in runs if r.wb_top1 is not None]


def load_spread(path: str | os.PathLike | None) -> dict[tuple, float]:
    """``{(model_arch, regime, head, split): sd}`` from a seed-spread file (``scripts/study/seed_spread.py``)."""
    if path is None or not Path(path).is_file():
        return {}
    rows = json.loads(Path(path).read_text())["regimes"]
    return {(r["model_arch"], r["regime"], r["head"], r["split"]): r["sd"] for r in rows}


# The table's label of each late-only head -> the label of the head a baseline trains ("GAP (fg mean)" -> "GAP").
PLAIN_HEAD = {head_names.label(h): head_names.label(h.replace("masked_mean", "mean")) for h in head_names.LABELS
              if "masked_mean" in h}


def paper_claims(runs, spread: dict[tuple, float] | None = None) -> list[Evidence]:
    """Claims 1-3 on table entries (:class:`bgmask.reporting.runs.RunResult`, seeds of a cell pooled by seed), in the
    table's order (rows sorted, strategies in column order), so a claim's id does not depend on the order the run
    folders were given in."""
    from bgmask.reporting.results import group_cells, strategy_columns

    spread = spread or {}
    evidence = []
    order = strategy_columns(runs)
    cells = {key: {c: cols[c] for c in sorted(cols, key=order.index)}
             for key, cols in sorted(group_cells(runs).items())}
    for (arch, head, regime), columns in cells.items():
        plain = PLAIN_HEAD.get(head, head)  # a late-only head (mean over the bird's tokens) against the plain head
        sd = spread.get((arch, regime, plain, "wb"))
        row = f"{arch} {regime}" + (f", {head} head" if head not in ("-", "–") else "")
        base = wb_measures(columns.get("none") or cells.get((arch, plain, regime), {}).get("none", []))
        for column, col_runs in columns.items():
            if column != "none":
                evidence.append(compare(CLAIM_OOD, f"{row}: {column} − baseline", wb_measures(col_runs), base,
                                        spread_sd=sd))
        early = wb_measures(columns.get("early", []))
        if columns.get("early"):
            for column, col_runs in columns.items():
                if column != "early":
                    evidence.append(compare(CLAIM_EARLY, f"{row}: early − {column if column != 'none' else 'baseline'}",
                                            early, wb_measures(col_runs), spread_sd=sd))
    vit_early = {(arch, regime): {} for (arch, head, regime) in cells if head not in ("-", "–")}  # rows with heads
    for (arch, head, regime), columns in cells.items():
        if (arch, regime) in vit_early and columns.get("early"):
            vit_early[(arch, regime)][head] = wb_measures(columns["early"])
    for (arch, regime), heads in vit_early.items():
        if "GAP" not in heads:
            continue
        for head, measures in heads.items():
            if head != "GAP":
                sd = spread.get((arch, regime, "GAP", "wb"))
                evidence.append(compare(CLAIM_GAP, f"{arch} {regime}, early masking: GAP − {head} head",
                                        heads["GAP"], measures, spread_sd=sd))
    return evidence


def group_claims(group_runs) -> list[Evidence]:
    """Claim 4: every method against the plain baseline of its block, on the test split's worst group (in the group
    table's order)."""
    from bgmask.reporting.group_results import table_order

    blocks: dict[tuple, dict[str, list]] = {}
    for r in sorted(group_runs, key=table_order):
        blocks.setdefault(r.block, {}).setdefault(r.label, []).append(r)
    evidence = []
    for (dataset, arch, _head, regime), methods in blocks.items():
        base_label = next((label for label, rs in methods.items() if rs[0].masking == "none" and not rs[0].balance),
                          None)
        base = [worst_measure(r) for r in methods.get(base_label, [])]
        for label, rs in methods.items():
            if label != base_label:
                evidence.append(compare(CLAIM_GROUPS, f"{dataset} {arch} {regime}: {label} − baseline, worst group",
                                        [worst_measure(r) for r in rs], base))
    return evidence


def worst_measure(r) -> Measure:
    test = r.sets.get("test", {})
    groups = [g for g in (test.get("groups") or {}).values() if g.get("num_images")]
    worst = min(groups, key=lambda g: g["correct"] / g["num_images"]) if groups else {}
    return Measure(r.seed, test.get("worst_group"), worst.get("correct"), worst.get("num_images"), r.run_dir)
