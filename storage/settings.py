"""Every default of the pipeline, declared once, and the typed settings a command line becomes.

A script turns its flags into these frozen objects once and hands them whole to the jobs,
``ModelManager.create_model``, the trainer and the attacker: nothing further down reads a flag or
repeats a default. Paths and the four roots are ``layout.py``'s; a dataset's training recipe is
declared by its ``mydataset`` class as a :class:`TrainingRecipe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: the one seed of the pipeline: splits, faults, training, input sampling and bootstrap intervals start from it
SEED = 42
#: inputs attacked together by the fit, cache and real-time steps (``--batch-size`` there); finished inputs
#: leave the batch, so a larger one is cheaper per input
ATTACK_BATCH = 128
#: CPU threads a job (and an evaluation) computes with (``--threads``). The thread count changes float rounding,
#: so it is one of a run's settings, the same on every launcher: one thread by default, because it is what a
#: Ray or Slurm job gets without asking for more, gives results that do not depend on the machine's core count,
#: and is the fastest per core for the DIGITS networks on a busy machine; raise it for big CPU-only training.
THREADS = 1


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


@dataclass(frozen=True)
class DeepFoolSettings:
    """foolbox 3's ``L2DeepFoolAttack`` parameters; its defaults are the paper's. ``first_order`` replaces the
    iteration by its first linearisation: the distance is min over the top ``candidates`` classes k of
    |l_k − l_0| / ‖∇(l_k − l_0)‖ (one forward and candidates − 1 input gradients), a cheaper estimate."""

    steps: int = 50
    candidates: int = 10
    overshoot: float = 0.02
    first_order: bool = False
    #: measure at the penultimate layer instead of the input (``feature_distance.py``): one forward pass
    feature: bool = False

    @property
    def mode(self) -> str:
        """The distance mode's name (``--distance``): ``deepfool``, ``deepfool:K``, ``first-order[:K]``,
        ``feature[:K]``."""
        name = FEATURE if self.feature else FIRST_ORDER if self.first_order else DEEPFOOL_MODE
        return name if self.candidates == DEFAULT_CANDIDATES else f"{name}:{self.candidates}"


DEEPFOOL_MODE, FIRST_ORDER, FEATURE = "deepfool", "first-order", "feature"
#: the ``shift`` of the clean test set (``shifts.py`` names the corruptions)
NO_SHIFT = "none"
DEFAULT_CANDIDATES = 10
DEEPFOOL = DeepFoolSettings()


def mode_flag(mode: str) -> str:
    """What a suggested command line adds to ask for distance ``mode`` (nothing for the default), or for a failure
    model fitted under shift (``deepfool+noise3+blur3``: ``--fit-shifts noise:3 blur:3``), for messages."""
    mode, _, fitted_under = mode.partition("+")
    flag = "" if mode == DEEPFOOL_MODE else f" --distance {mode}"
    if fitted_under:
        flag += " --fit-shifts " + " ".join(f"{word[:-1]}:{word[-1]}" for word in fitted_under.split("+"))
    return flag


def distance_mode(text: str) -> DeepFoolSettings:
    """The settings of a distance mode named on the command line: ``deepfool`` (the paper's: 10 candidate
    classes, up to 50 steps), ``deepfool:K`` (the top K classes, K >= 2, foolbox's ``candidates``),
    ``first-order`` or ``first-order:K`` (one linearisation, no iteration), ``feature`` or ``feature:K`` (the
    distance at the penultimate layer, fDBD's: closed form for a linear head)."""
    from utils import UsageError

    name, colon, count = str(text).strip().lower().partition(":")
    if name not in (DEEPFOOL_MODE, FIRST_ORDER, FEATURE) or (colon and not (count.isdigit() and int(count) >= 2)):
        raise UsageError(f"unknown distance mode {text!r}: use deepfool, deepfool:K, first-order[:K] or feature[:K] "
                         "with an integer K >= 2 (candidate classes)")
    return DeepFoolSettings(candidates=int(count) if count else DEFAULT_CANDIDATES, first_order=name == FIRST_ORDER,
                            feature=name == FEATURE)


@dataclass(frozen=True)
class AttackSettings:
    """How the fit, cache and real-time steps attack a version's validation or test inputs."""

    batch_size: int = ATTACK_BATCH
    #: at most this many validation and test inputs per version (a stratified sample; None: all)
    max_inputs: int | None = None
    deepfool: DeepFoolSettings = field(default=DEEPFOOL)
    #: the fit step also attacks the validation inputs under these shifts (``--fit-shifts``; ``shifts.py``)
    fit_shifts: tuple[str, ...] = ()

    @property
    def failure_model(self) -> str:
        """The name the failure model (and every file of its fit) goes by: the distance mode, with the shifts it
        was fitted under (``deepfool+noise3+blur3``): a failure model fitted under shift is used only as such."""
        if not self.fit_shifts:
            return self.deepfool.mode
        from mydataset.shifts import tag

        return f"{self.deepfool.mode}+{tag(self.fit_shifts)}"


@dataclass(frozen=True)
class LaunchSettings:
    """Where a launch's jobs run and how: ``--launcher`` and its engine's flags, built once from the command line
    (``cli.launch_settings``) and handed whole to the launcher. ``None`` means the default that depends on the
    jobs or the machine, stated beside each field."""

    launcher: str = "local"
    quiet: bool = False
    #: Ray: join this cluster (None: ``$RAY_ADDRESS``, else a local cluster started for the launch)
    ray_address: str | None = None
    #: Ray: CPUs reserved per job (None: the jobs' ``--threads``)
    cpus_per_job: float | None = None
    #: Ray: GPUs reserved per job, fractions allowed (None: 1 where this machine has CUDA, else 0)
    gpus_per_job: float | None = None
    slurm_partition: str | None = None
    #: Slurm: time limit of one array task (all of its jobs), minutes
    slurm_time: int = 240
    #: Slurm: jobs per array task (None: ``auto``, see ``launchers.slurm_arrays.pack_tasks``)
    slurm_jobs_per_task: int | None = None
    #: Slurm: CPUs per array task (None: the jobs' ``--threads``)
    slurm_cpus_per_job: int | None = None
    slurm_gpus_per_job: int = 0
    slurm_array_parallelism: int | None = None
    #: Slurm: extra sbatch options, ``(key, value)`` pairs
    slurm_sbatch_options: tuple[tuple[str, str], ...] = ()
    #: Slurm: submit and return instead of waiting
    no_wait: bool = False

    def engine_fields(self) -> dict[str, str]:
        """Each engine flag's field and the launcher it belongs to."""
        return {name: ("ray" if name in ("ray_address", "cpus_per_job", "gpus_per_job") else "slurm")
                for name in self.__dataclass_fields__ if name.startswith(("ray_", "cpus_", "gpus_", "slurm_"))
                or name == "no_wait"}


DEFAULT_LAUNCH = LaunchSettings()
