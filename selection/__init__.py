"""The evaluation's two registries: per-version failure scores (``SCORES``) and per-input selection methods
(``METHODS``), DeepFailGuard among them; the contract they follow is documented in ``selection/base.py``.

To add one, write a module here with a :class:`Score` subclass decorated ``@register_score`` (which also adds the
method selecting by it) or a :class:`Method` subclass decorated ``@register_method``: every module of this
package is imported below, and the results, summary, failure-prediction table, ``methods.json`` and figures
read the registries. ``register_method(KnoraEliminate, name="knora_e15", k=15)`` registers a class again under
another name with other parameters.
"""

import importlib
import pkgutil

from selection.base import (
    METHODS,
    NEEDS,
    PREFERRED_MEMBER,
    SCORES,
    SMALLEST_CLASS,
    Method,
    Score,
    SelectBy,
    SetContext,
    describe,
    family_of,
    preference_by_validation_accuracy,
    register_method,
    register_score,
    undefined_for,
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

__all__ = ["METHODS", "NEEDS", "PREFERRED_MEMBER", "SCORES", "SMALLEST_CLASS", "Method", "Score", "SelectBy",
           "SetContext", "describe", "family_of", "preference_by_validation_accuracy", "register_method",
           "register_score", "undefined_for", "unmet_needs", "weighted_vote"]
