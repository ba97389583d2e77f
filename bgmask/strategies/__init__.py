"""Masking strategies: the base class and registry (:mod:`bgmask.strategies.base`) and one module per strategy.

Every module of this package is imported here, and its ``@register``-ed strategy becomes known to the entry points
(``python -m bgmask --masking NAME``) and to ``collect_results``: adding a strategy is adding a file. Only this
package's registry is touched by the imports.
"""

import importlib
import pkgutil

from bgmask.data.needs import DataNeeds
from bgmask.strategies.base import ModelInput, Strategy, get, label, names, register

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["DataNeeds", "ModelInput", "Strategy", "get", "label", "names", "register"]
