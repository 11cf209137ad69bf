"""The plugin contract of the evaluation: what a failure score and a selection method are, and the two
registries they enter.

**A score** gives, per version and input, how likely the version is to be right (higher = more likely). It may
learn from the version's validation outputs (:meth:`Score.fit`), never from its test answers. Registering a
score also registers the selection method of the same name: per input, the member with the highest score
answers, as DeepFailGuard does with its P(correct).

**A method** turns a set's members into one label per test input. It may learn from the members' validation
outputs (:meth:`Method.fit`, once per set), never from the test truth, which it is never given.

The contract, for both:

- *Hyper-parameters are dataclass fields with declared defaults.* Every subclass is made a frozen dataclass
  when it is defined (do not decorate it yourself): ``k: int = 7`` is a parameter. Class attributes without
  an annotation are not: ``name`` (the default registered name), ``needs`` (keys of :data:`NEEDS`: what it
  reads beyond labels, distances and failure models), ``ties`` (its tie rule in words) and, for scores,
  ``probability`` (it estimates P(correct): calibration is reported) and ``selects`` (False: a failure
  predictor only), and ``attacks`` (True: it needs each member's distance, so a member costs the distance
  mode's attack, not only its forward pass; the results' ``compute`` and ``flops_per_input`` read it).
- *Registration takes a name and optional field values*: ``@register_method`` enters the class under its
  ``name`` with its defaults; ``register_method(KnoraEliminate, name="knora_e15", k=15)`` enters it again under
  another name with other values. The registries hold the configured instances; :func:`describe` is what the
  evaluation writes to ``methods.json`` for every score and method that ran.
- *Members come in one canonical order* (the architectures' registry order, then the fault id), never in the
  order flags were typed. Where a method must choose between members that tie, it prefers the member
  ``SetContext.preference`` puts first: the higher validation accuracy, then the canonical order (the
  evaluation's rule; the paper's published configurations keep their own order, first listed first, so that
  the paper's figures are reproduced). Ties between *classes* (a vote) go to the smallest class index.
- *What a method runs*: by default every member on every input (``compute`` 1.0). A method that stops early
  (a cascade) says per input which members it ran (:meth:`Method.visits`), and the evaluation prices that with
  the members' costs (``distances/costs.py``, in their metadata).
- *Per-version work goes through* ``version.fitted(key, fit)``, keyed by the registered name, so that the sets
  a version joins share it; work that reads only the validation outputs and the failure model goes through
  ``version.learn(key, fit)``, which the version's records under every shift share.

Where a member lacks an output a score or method needs, or a method says it cannot run on the members
(``Method.cannot_run``; for the method selecting by a score, where the score is undefined for a member:
``Score.undefined``), the evaluation skips it for that set and says so once per dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from utils import Registry

#: what a score or method may need beyond a version's test labels, distances and failure model, with the step
#: that writes it
NEEDS = {
    "probabilities": ("test softmax probabilities", "main_cache_test_distances.py"),
    "logits": ("test logits", "main_cache_test_distances.py"),
    "validation": ("validation outputs", "main_train_DeepFailGuard.py"),
    "costs": ("the versions' costs (FLOPs per input, in their metadata)",
              "main_train_model.py, or main_train_DeepFailGuard.py / main_cache_test_distances.py for older versions"),
    "feature_deviations": ("the penultimate features' parts of fDBD (the feature distance mode's caches)",
                           "main_cache_test_distances.py --distance feature (and evaluating with --distance feature)"),
    "features": ("the penultimate features (the feature distance mode's caches and validation outputs)",
                 "main_train_DeepFailGuard.py and main_cache_test_distances.py --distance feature (and evaluating "
                 "with --distance feature)"),
    "region": ("the healthy versions' validation and test softmax (the region of competence)",
               "main_train_DeepFailGuard.py and main_cache_test_distances.py for the healthy versions"),
}

#: configured score instances by registered name, in registration order (the failure-prediction columns' order)
SCORES = Registry("failure score", str.lower)
#: configured method instances by registered name, in registration order (the order of the tables' rows)
METHODS = Registry("selection method", str.lower)

#: the tie rule of every method that picks one member's answer
PREFERRED_MEMBER = "the member SetContext.preference puts first (higher validation accuracy, then canonical order)"
#: the tie rule of the methods that pick a class from summed votes, weights or probabilities
SMALLEST_CLASS = "the smallest class index"


class Plugin:
    """What scores and methods share: their parameters are dataclass fields, their name is the registered one."""

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    ties: ClassVar[str] = ""
    #: each member it runs is also attacked (its distance is read)
    attacks: ClassVar[bool] = False
    #: the family the figures draw it with (a panel each): empty for the family of its module
    #: (:data:`MODULE_FAMILIES`), "other" where that has none
    family: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        dataclass(frozen=True)(cls)

    def parameters(self) -> dict:
        """The values of this entry's hyper-parameters (its dataclass fields)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


class Score(Plugin):
    """A per-version, per-input failure score. Subclasses set ``name`` (and ``needs``, ``probability``) and
    implement :meth:`compute`, and :meth:`fit` when the score learns from validation outputs."""

    #: the score estimates P(correct): calibration (ECE, Brier) is reported for it
    probability: ClassVar[bool] = False
    #: False for a score that is only a failure predictor, not a selector
    selects: ClassVar[bool] = True
    #: the score reads the version's failure model (its KDEs): it means nothing where that was fitted without a
    #: wrong (or without a right) validation answer, and ``failure_prediction.csv`` leaves it empty there
    failure_model: ClassVar[bool] = False

    def fit(self, version):
        """What the score learns from ``version.validation`` (and its failure model); None: nothing."""
        return None

    def compute(self, state, answers, version) -> np.ndarray:
        """One score per input of ``answers`` (a ``caches.CachedAnswers``), given what :meth:`fit` returned."""
        raise NotImplementedError

    def undefined(self, version) -> str | None:
        """Why the score means nothing for ``version`` although its needs are met (a likelihood ratio fitted without
        a wrong validation input, say), in words; None: it is defined. ``failure_prediction.csv`` leaves it empty
        for that version, and the method selecting by it skips the sets the version is in, saying why."""
        return None

    def validation_scores(self, state, version) -> np.ndarray:
        """The score of each of the version's validation inputs from a fit that did not see that input: what
        thresholds are calibrated on (cascades, abstention). A score that learns nothing from validation (no
        :meth:`fit`) is computed on it as it is; one that does is cross-fitted (:func:`cross_fitted`). A score
        that learns from validation elsewhere (DeepFailGuard's KDEs) overrides this."""
        if type(self).fit is Score.fit:
            return self.compute(state, version.validation, version)
        return cross_fitted(self, version)


class Method(Plugin):
    """A per-input selection method over a set of versions. Subclasses set ``name``, ``needs`` and ``ties`` and
    implement :meth:`predict`, and :meth:`fit` when the method learns from the members' validation outputs."""

    def cannot_run(self, members, context: "SetContext") -> str | None:
        """Why the method cannot run on these members although its ``needs`` are met (a validation split of one
        class, say), in words; None: it can. The evaluation skips it for the set and says so once."""
        return None

    def fit(self, members, context: "SetContext"):
        """What the method learns for this set from its members' validation outputs; None: nothing."""
        return None

    def predict(self, state, members, context: "SetContext") -> np.ndarray:
        """One label per test input."""
        raise NotImplementedError

    def visits(self, state, members, context: "SetContext") -> np.ndarray | None:
        """Which members the method runs (members × inputs, bool) to answer each test input; None: all of them."""
        return None


#: folds of cross-fitted validation scores
CROSS_FIT_FOLDS = 5


def validation_folds(version, folds: int = CROSS_FIT_FOLDS):
    """(fitted on, scored) index pairs over the version's validation inputs: stratified by whether the version was
    right where each group has enough inputs, plain otherwise; seeded, so every run splits alike."""
    correct = version.validation.correct
    if len(correct) < 2:
        return []  # nothing to hold out from: every cross-fitted score stays NaN
    stratified = min(int(correct.sum()), int((~correct).sum())) >= folds
    splitter = (StratifiedKFold if stratified else KFold)(min(folds, len(correct)), shuffle=True, random_state=0)
    return list(splitter.split(np.zeros(len(correct)), correct))


def cross_fitted(score: Score, version) -> np.ndarray:
    """Each validation input's score from :meth:`Score.fit` on the other folds' validation outputs."""
    scores = np.full(len(version.validation.labels), np.nan)
    for held_back, held_out, scored in version.learn("validation folds", held_back_folds):
        scores[scored] = score.compute(score.fit(held_back), held_out, held_back)
    return scores


def held_back_folds(version) -> list:
    """Per fold of :func:`validation_folds`: the version with only the other folds' validation outputs (what the
    scores fit on; its own :meth:`learn` cache lets the scores that fit alike share each fold's fit), the fold's
    validation answers, and their indices."""
    return [(replace(version, validation=version.validation.subset(fitted_on)), version.validation.subset(scored),
             scored) for fitted_on, scored in validation_folds(version)]


@dataclass
class SetContext:
    """What a method may know beyond its members: the number of classes, the dataset's region of competence
    (for dynamic selection; never the test truth) and the members' order of preference on ties."""

    num_classes: int
    region: object | None = None
    #: member indices, the one preferred on a tie first (None: the members' own order)
    preference: tuple[int, ...] | None = None

    def first_preferred_max(self, values: np.ndarray) -> np.ndarray:
        """Per input (column of ``values``, members × inputs), the index of the member with the largest value,
        the preferred one among those that tie."""
        order = np.arange(len(values)) if self.preference is None else np.asarray(self.preference)
        return order[np.argmax(np.asarray(values)[order], axis=0)]


def preference_by_validation_accuracy(members) -> tuple[int, ...]:
    """The evaluation's tie rule: higher validation accuracy first, then the members' (canonical) order."""
    return tuple(sorted(range(len(members)), key=lambda i: (-float(members[i].val_acc), i)))


def stacked_labels(members) -> np.ndarray:
    """The members' test labels as one (members × inputs) array."""
    return np.stack([member.labels for member in members])


def answer_of(chosen: np.ndarray, members) -> np.ndarray:
    """Per input, the label of member ``chosen[i]``."""
    return np.take_along_axis(stacked_labels(members), np.asarray(chosen)[None, :], axis=0)[0]


class SelectBy(Method):
    """Per input, the member whose score is highest answers."""

    ties: ClassVar[str] = PREFERRED_MEMBER
    score: str = ""

    @property
    def needs(self) -> tuple[str, ...]:
        return SCORES[self.score].needs

    @property
    def attacks(self) -> bool:
        return SCORES[self.score].attacks

    def cannot_run(self, members, context) -> str | None:
        return undefined_for(SCORES[self.score], members)

    def predict(self, state, members, context) -> np.ndarray:
        return answer_of(context.first_preferred_max(np.stack([member.score(self.score) for member in members])),
                         members)


def undefined_for(score: Score, members) -> str | None:
    """Why ``score`` means nothing for one of ``members`` (:meth:`Score.undefined`, the first such member's); None:
    it is defined for all of them."""
    return next((reason for reason in map(score.undefined, members) if reason), None)


#: the families of the built-in plugins' modules (a method selecting by a score is of its score's family)
MODULE_FAMILIES = {"selection.deepfailguard": "DeepFailGuard and its ablations",
                   "selection.combination": "combining the answers",
                   "selection.weighted_voting": "combining the answers",
                   "selection.confidence": "softmax and logit scores",
                   "selection.feature_scores": "softmax and logit scores",
                   "selection.likelihood_ratio": "likelihood ratios of the penultimate features",
                   "selection.dynamic": "dynamic selection", "selection.cascade": "cascades"}


def family_of(method: str) -> str:
    """The family of a registered method (``Plugin.family``, else its module's, else "other")."""
    entry = METHODS[method]
    plugin = SCORES[entry.score] if isinstance(entry, SelectBy) else entry
    return plugin.family or MODULE_FAMILIES.get(type(plugin).__module__, "other")


def _configure(cls: type, registry_name: str | None, values: dict, base: type):
    """An instance of ``cls`` with ``values`` for its fields, carrying the name it is registered under."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{cls!r} is not a {base.__name__} subclass")
    unknown = sorted(set(values) - {field.name for field in dataclasses.fields(cls)})
    if unknown:
        known = ", ".join(field.name for field in dataclasses.fields(cls)) or "none"
        raise TypeError(f"{cls.__name__} has no parameter(s) {', '.join(unknown)} (its parameters: {known})")
    instance = cls(**values)
    object.__setattr__(instance, "name", registry_name or cls.name)  # frozen: the one place a name is set
    return instance


def register_method(cls: type | None = None, /, *, name: str | None = None, **values):
    """Enter a :class:`Method` in :data:`METHODS`: as a class decorator under its ``name`` with its defaults
    (``@register_method``), or called with another ``name`` and parameter values
    (``register_method(KnoraEliminate, name="knora_e15", k=15)``). Returns the class."""
    def enter(cls: type) -> type:
        method = _configure(cls, name, values, Method)
        METHODS.add(method.name, method)
        return cls

    return enter if cls is None else enter(cls)


def register_score(cls: type | None = None, /, *, name: str | None = None, **values):
    """Enter a :class:`Score` in :data:`SCORES` (as :func:`register_method` does) and, unless it only predicts
    failures (``selects = False``), the method selecting by it in :data:`METHODS`, under the same name."""
    def enter(cls: type) -> type:
        score = _configure(cls, name, values, Score)
        SCORES.add(score.name, score)
        if score.selects:
            METHODS.add(score.name, _configure(SelectBy, score.name, {"score": score.name}, Method))
        return cls

    return enter if cls is None else enter(cls)


def describe(entry: Plugin) -> dict:
    """What ``methods.json`` records of a registered score or method: its class, parameters, needs, tie rule."""
    def plain(value):
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    described = {"class": f"{type(entry).__module__}.{type(entry).__qualname__}",
                 "parameters": {key: plain(value) for key, value in entry.parameters().items()},
                 "needs": list(entry.needs), "attacks": bool(entry.attacks)}
    if isinstance(entry, Method):
        described["ties"] = entry.ties
    return described


def unmet_needs(needs, members, context: SetContext | None = None) -> list[str]:
    """The needs some member (or the context) cannot meet."""
    unmet = []
    for need in needs:
        if need == "region":
            if context is None or context.region is None:
                unmet.append(need)
        elif not all(member.has(need) for member in members):
            unmet.append(need)
    return unmet


def majority_vote(version_labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """The most frequent label per input; ties go to the smallest class index (the paper's rule)."""
    version_labels = np.asarray(version_labels)
    num_classes = num_classes or int(version_labels.max()) + 1
    n_inputs = version_labels.shape[1]
    cells = np.arange(n_inputs)[None, :] * num_classes + version_labels
    counts = np.bincount(cells.ravel(), minlength=n_inputs * num_classes).reshape(n_inputs, num_classes)
    return counts.argmax(axis=1)  # argmax takes the first maximum: the smallest class index


def weighted_vote(labels: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """Per input, the class with the largest summed weight of the members voting for it (smallest class on
    ties); ``labels`` and ``weights`` are (members × inputs)."""
    labels = np.asarray(labels)
    totals = np.zeros((labels.shape[1], num_classes))
    rows = np.arange(labels.shape[1])
    for member_labels, member_weights in zip(labels, np.asarray(weights, dtype=np.float64)):
        totals[rows, member_labels] += member_weights  # one cell per input and member: no repeated index
    return totals.argmax(axis=1)
