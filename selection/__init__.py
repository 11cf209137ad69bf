"""The evaluation's two registries: per-version failure scores (``SCORES``) and per-input selection methods
(``METHODS``), DeepFailGuard among them.

To add one, write a module here with a :class:`Score` subclass decorated ``@register_score`` (which also adds the
method selecting by it) or a :class:`Method` subclass decorated ``@register_method``: every module of this
package is imported below, and the results, summary, failure-prediction table and figures read the registries.
"""

import importlib
import pkgutil

from selection.base import (
    METHODS,
    NEEDS,
    SCORES,
    Method,
    Score,
    SelectBy,
    SetContext,
    register_method,
    register_score,
    unmet_needs,
    weighted_vote,
)

# isort: off
# Registration order is the order of the tables' rows and columns: DeepFailGuard and its variants, the
# combining baselines, the softmax scores, dynamic selection; any other module after them.
from selection import deepfailguard, combination, confidence, dynamic  # noqa: F401
# isort: on

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "NEEDS", "SCORES", "Method", "Score", "SelectBy", "SetContext", "register_method",
           "register_score", "unmet_needs", "weighted_vote"]
