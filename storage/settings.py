"""Every default of the pipeline, declared once, and the typed settings a command line becomes.

A script turns its flags into these frozen objects once and hands them whole to the jobs,
``ModelManager.create_model``, the trainer and the attacker: nothing further down reads a flag or
repeats a default. Paths and the four roots are ``storage/layout.py``'s, the shifts' names
``storage/shifts.py``'s; a dataset's training recipe is declared by its ``mydataset`` class as a
:class:`TrainingRecipe`; a launcher's options by the launcher (``launchers/``). The distance modes are a
registry here because the file names, the costs and ``--distance`` all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from storage.shifts import tag
from utils import SEED, Registry, UsageError, resolve

#: the four roots' defaults (``--data-root``, ``--model-root``, ``--info-root``, ``--output``; relative paths are
#: read from the folder a script runs in) and the real-time evaluation's own output
DEFAULT_DATA_ROOT = "mydataset/data"
DEFAULT_MODEL_ROOT = "mymodel/model"
DEFAULT_INFO_ROOT = "input_information"
DEFAULT_OUTPUT = "dfg_results"
DEFAULT_REALTIME_OUTPUT = "dfg_results/realtime"

#: the selective risk an abstention threshold certifies and the probability the certificate may fail (``--alpha``,
#: ``--delta``; ``evaluation/selective.py``)
ALPHA, DELTA = 0.05, 0.1
#: training seeds per version of a fault validation (``main_validate_faults.py --seeds``; the first is the pipeline's)
FAULT_VALIDATION_SEEDS = 10
#: inputs attacked together by the fit, cache and real-time steps (``--batch-size`` there); finished inputs
#: leave the batch, so a larger one is cheaper per input
ATTACK_BATCH = 128
#: CPU threads a job (and an evaluation) computes with (``--threads``). The thread count changes float rounding,
#: so it is one of a run's settings, the same on every launcher: one thread by default, because it is what a
#: Ray or Slurm job gets without asking for more, gives results that do not depend on the machine's core count,
#: and is the fastest per core for the DIGITS networks on a busy machine; raise it for big CPU-only training.
THREADS = 1


@dataclass(frozen=True)
class Roots:
    """The four folders every step reads and writes (``--data-root``, ``--model-root``, ``--info-root``,
    ``--output``), as text so that a job holding them pickles and compares plainly."""

    data: str = DEFAULT_DATA_ROOT
    model: str = DEFAULT_MODEL_ROOT
    info: str = DEFAULT_INFO_ROOT
    output: str = DEFAULT_OUTPUT

    def __post_init__(self):
        for root in fields(self):  # Path or str in, str kept
            object.__setattr__(self, root.name, str(getattr(self, root.name)))


DEFAULT_ROOTS = Roots()


@dataclass(frozen=True)
class TrainingRecipe:
    """How a network is trained: the paper's recipe (Adam, lr 1e-4, weight decay 1e-4, 30 epochs, StepLR
    30/×0.1, batch 256) unless a dataset or an architecture declares its own."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-4
    step_size: int = 30
    gamma: float = 0.1


PAPER_RECIPE = TrainingRecipe()


@dataclass(frozen=True)
class TrainSettings:
    """What a command line asks of training; ``None`` keeps the dataset's recipe for the architecture."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int = SEED
    image_size: int | None = None
    #: bfloat16 mixed precision (None: the architecture's policy on CUDA, off elsewhere)
    amp: bool | None = None
    #: a parametric fault's value (None: its declared default; see ``FaultInjector.FaultParameter``)
    fault_parameter: float | None = None

    def recipe(self, defaults: TrainingRecipe) -> TrainingRecipe:
        """The dataset's recipe with what was asked for put in."""
        return replace(defaults, epochs=self.epochs or defaults.epochs, lr=self.lr or defaults.lr,
                       batch_size=self.batch_size or defaults.batch_size)

    def recorded(self, defaults: TrainingRecipe) -> dict:
        """What a version's metadata records as its ``settings`` (and a rerun compares to decide on retraining)."""
        recipe = self.recipe(defaults)
        return {"epochs": recipe.epochs, "lr": recipe.lr, "batch_size": recipe.batch_size, "seed": self.seed,
                "image_size": self.image_size, "fault_parameter": self.fault_parameter}


DEFAULT_TRAINING = TrainSettings()


DEEPFOOL_MODE = "deepfool"
#: the candidate classes a distance mode considers unless its name says otherwise (``first-order:2``)
DEFAULT_CANDIDATES = 10


@dataclass(frozen=True)
class DistanceMode:
    """One way of measuring a version's distance to its decision boundary (``--distance NAME[:K]``), an entry of
    :data:`DISTANCE_MODES`. Its measurement is a class with ``from_settings(network, settings, device, **options)``
    returning an object with ``attack(images)`` and ``attack_loader(loader)`` (``Attacker``'s interface), named by
    a ``"module:Class"`` path (imported on first use, so that a command line lists and checks the modes without
    importing torch) or given as the class itself."""

    name: str
    measurement: str | type
    #: one line for ``--distance``'s help
    help: str
    #: the candidate counts K every version is costed for in this mode (``distances/costs.py``); a mode a run uses
    #: is costed anyway
    costed: tuple[int, ...] = ()
    #: what the mode's caches and validation outputs hold besides the labels, softmax, logits and distances
    #: (attributes of its results, written before the distances)
    outputs: tuple[str, ...] = ()
    #: the measurement walks each input to the boundary and past it (DeepFool): where under half of the inputs'
    #: labels flip, its distances are not distances to the boundary, and the fit and cache steps warn (any mode
    #: warns where none flips)
    reaches_boundary: bool = False

    def measurement_class(self) -> type:
        return resolve(self.measurement)


#: every distance mode, by name, in registration order; ``--distance``, the file names and the costs read it
DISTANCE_MODES = Registry("distance mode", str.lower)


def register_distance_mode(mode: DistanceMode) -> DistanceMode:
    """Enter a distance mode in :data:`DISTANCE_MODES` (a lower-case name, once)."""
    DISTANCE_MODES.add(mode.name, mode)
    return mode


#: the built-in modes (a new one: its measurement class in a module, and one ``register_distance_mode`` line)
DISTANCE_TABLE: tuple[DistanceMode, ...] = tuple(register_distance_mode(mode) for mode in (
    DistanceMode(DEEPFOOL_MODE, "Attacker:Attacker", costed=(DEFAULT_CANDIDATES, 2), reaches_boundary=True,
                 help="the paper's: foolbox 3's L2 DeepFool, up to 50 steps"),
    DistanceMode("first-order", "distances.first_order:FirstOrderDistance", costed=(DEFAULT_CANDIDATES, 2),
                 help="DeepFool's first linearisation only, no iteration: cheaper"),
    DistanceMode("feature", "distances.feature:FeatureDistance",
                 outputs=("feature_margins", "feature_deviations", "features"),
                 help="at the penultimate layer, fDBD's: one forward pass"),
))


@dataclass(frozen=True)
class DistanceSettings:
    """How a version's boundary distances are measured: the mode (:data:`DISTANCE_MODES`), its candidate classes K
    (the top K of the clean logits; foolbox's ``candidates``) and DeepFool's step budget and overshoot (foolbox 3's
    ``L2DeepFoolAttack`` parameters; the defaults are the paper's)."""

    name: str = DEEPFOOL_MODE
    candidates: int = DEFAULT_CANDIDATES
    steps: int = 50
    overshoot: float = 0.02

    @property
    def mode(self) -> str:
        """The mode as ``--distance`` names it: ``deepfool``, ``first-order:2``, ..."""
        return self.name if self.candidates == DEFAULT_CANDIDATES else f"{self.name}:{self.candidates}"

    def attacker(self, network, device=None, **options):
        """The mode's measurement of ``network`` (a ``MyModel`` or its ``nn.Module``) with these settings."""
        return DISTANCE_MODES.get_class(self.name).measurement_class().from_settings(network, self, device, **options)


DEEPFOOL = DistanceSettings()


def distance_mode(text: str) -> DistanceSettings:
    """The settings of a distance mode named on the command line, ``NAME`` or ``NAME:K`` (a registered mode; K >= 2
    candidate classes); anything else is a UsageError naming the modes."""
    name, colon, count = str(text).strip().lower().partition(":")
    if name not in DISTANCE_MODES or (colon and not (count.isdigit() and int(count) >= 2)):
        raise UsageError(f"unknown distance mode {text!r}: use {', '.join(f'{n}[:K]' for n in DISTANCE_MODES)} "
                         "with an integer K >= 2 (candidate classes)")
    return DistanceSettings(name, int(count) if count else DEFAULT_CANDIDATES)


def mode_outputs(mode: str) -> tuple[str, ...]:
    """What a mode's files hold besides the standard ones, for a mode as named in files (``feature:3``, or a failure
    model fitted under shift, ``feature+noise3``)."""
    return DISTANCE_MODES.get_class(mode.partition("+")[0].partition(":")[0]).outputs


def mode_flag(mode: str) -> str:
    """What a suggested command line adds to ask for distance ``mode`` (nothing for the default), or for a failure
    model fitted under shift (``deepfool+noise3+blur3``: ``--fit-shifts noise:3 blur:3``), for messages."""
    mode, _, fitted_under = mode.partition("+")
    flag = "" if mode == DEEPFOOL_MODE else f" --distance {mode}"
    if fitted_under:
        flag += " --fit-shifts " + " ".join(f"{word[:-1]}:{word[-1]}" for word in fitted_under.split("+"))
    return flag


@dataclass(frozen=True)
class AttackSettings:
    """How the fit, cache and real-time steps attack a version's validation or test inputs."""

    batch_size: int = ATTACK_BATCH
    #: at most this many validation and test inputs per version (a stratified sample; None: all)
    max_inputs: int | None = None
    distance: DistanceSettings = field(default=DEEPFOOL)
    #: the fit step also attacks the validation inputs under these shifts (``--fit-shifts``; ``storage/shifts.py``)
    fit_shifts: tuple[str, ...] = ()

    @property
    def failure_model(self) -> str:
        """The name the failure model (and every file of its fit) goes by: the distance mode, with the shifts it
        was fitted under (``deepfool+noise3+blur3``): a failure model fitted under shift is used only as such."""
        return f"{self.distance.mode}+{tag(self.fit_shifts)}" if self.fit_shifts else self.distance.mode

