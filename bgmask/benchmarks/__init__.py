"""Benchmarks: the base class and registry (:mod:`bgmask.benchmarks.base`) and one module per benchmark.

Every module of this package is imported here, and its ``@register``-ed benchmark becomes known to ``--dataset``:
adding a benchmark is adding a file (or a module with ``@register`` imported before the run).
"""

import importlib
import pkgutil

from bgmask.benchmarks.base import (
    Benchmark,
    BenchmarkData,
    DataNeeds,
    EvalSet,
    get,
    names,
    register,
    resolve_config,
    resolve_head_init,
    selection_metric,
    split_train_val,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Benchmark", "BenchmarkData", "DataNeeds", "EvalSet", "get", "names", "register", "resolve_config",
           "resolve_head_init", "selection_metric", "split_train_val"]
