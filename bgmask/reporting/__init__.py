"""Reporting: what ``scripts/collect_results.py`` makes of finished run folders. The paper-style tables
(:mod:`~bgmask.reporting.results`) and the group protocol's (:mod:`~bgmask.reporting.group_results`), the claims with
their verdicts (:mod:`~bgmask.reporting.claims`), the figures (:mod:`~bgmask.reporting.figures`,
:mod:`~bgmask.reporting.gallery`) and the files they are written to (:mod:`~bgmask.reporting.outputs`). It reads
results.json and args.yaml only: nothing here runs a model."""
