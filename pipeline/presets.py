"""The presets: the grids of versions ``--preset`` names, which run where ``--datasets/--models/--bugs`` are not given.
Data only (names, ids, families), so that a command line lists and checks them without loading torch; the grid they
stand for is read from the registries when it is resolved (``pipeline/grids.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from faults import CUSTOM, MUTATION, PAPER


@dataclass(frozen=True)
class Preset:
    """A default grid of versions: what runs when ``--datasets/--models/--bugs`` are not given.

    ``None`` stands for "every one registered", read when the grid is resolved (``pipeline.grids.resolved``): an
    architecture, a dataset or a fault added to its registry joins the presets that take them all.
    """

    description: str
    #: dataset names (None: the paper's datasets)
    datasets: tuple[str, ...] | None = None
    #: architecture names (None: every registered architecture)
    models: tuple[str, ...] | None = None
    #: fault ids (None: healthy and every fault of ``families``; each dataset keeps those that apply to it)
    bugs: tuple[int, ...] | None = None
    #: the fault families ``bugs=None`` takes (``faults.FAMILIES``; None: every family)
    families: tuple[str, ...] | None = None
    #: training epochs of some architectures (the others: their dataset's recipe)
    epochs: dict[str, int] = field(default_factory=dict)
    #: validation and test inputs attacked per version (None: all)
    max_inputs: int | None = None


#: the paper's faults and any a user registers; the DL-mutation operators (13 and up) have a preset of their own
NOT_MUTATIONS = (PAPER, CUSTOM)

PRESETS = {
    "digits": Preset("DIGITS x every architecture x every fault that applies to it (but the mutation operators)",
                     datasets=("DIGITS",), families=NOT_MUTATIONS),
    # the README's one-command demo, sized for five minutes on two CPU cores: three architectures trained
    # briefly (so they make mistakes worth predicting), a trained fault (5: a third of the epochs) and a
    # test-data fault (10: noisy inputs), 40 attacked inputs per split (the attack is most of the time)
    "demo": Preset("DIGITS x squeezenet, densenet, resnet x faults 0, 5, 10, brief training, 40 inputs per split",
                   datasets=("DIGITS",), models=("squeezenet", "densenet", "resnet"), bugs=(0, 5, 10),
                   epochs={"densenet": 3, "resnet": 2}, max_inputs=40),
    "paper": Preset("the paper's datasets x every architecture x every fault that applies (but the mutation "
                    "operators)", families=NOT_MUTATIONS),
    "all-faults": Preset("DIGITS x every architecture x every fault that applies (the paper's and the mutation "
                         "operators): main_validate_faults.py's default", datasets=("DIGITS",)),
    "mutations": Preset("DIGITS x every architecture x the DL-mutation operators (faults 13 and up) that apply",
                        datasets=("DIGITS",), families=(MUTATION,)),
}
