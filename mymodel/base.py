"""What every architecture class declares (how to build the healthy network and its fault-1 variant), and
the registry the classes enter with ``@register_model``."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from utils import Registry, UsageError

#: every architecture, by (lower-case) name, in registration order: the canonical order of the grid, of every
#: version set's members and of the result tables, whatever order ``--models`` was typed in; presets, ``--help``
#: and the tests read it
MODELS = Registry("model", str.lower)
#: class decorator: enter an architecture in ``MODELS`` under its ``name``
register_model = MODELS.register


class MyModel:
    """One architecture. ``model_structure`` is the ``nn.Module``; ModelManager fills in the rest.

    The contract: subclasses set ``name`` (lower case, unique) and ``min_input_size`` and implement
    :meth:`build` (the network, randomly initialised, no download) and, for fault 1, :meth:`build_reduced`;
    ``amp_by_default`` and ``float32_under_amp`` say how CUDA training may use bf16. Which model faults the
    architecture can carry is checked by each fault (``FaultInjector.unsupported_reason``): fault 1 needs
    :meth:`build_reduced`, fault 2 a stride-1 convolution above 1×1, fault 3 activations that are modules.
    """

    name: str = ""
    #: smallest square input the network accepts (its pooling stack must not reach 0×0)
    min_input_size: int = 32
    #: train under bf16 autocast on CUDA unless asked otherwise (``--amp/--no-amp``): only where the
    #: architecture reaches its float32 accuracy within a point that way (docs/results.md, "On a GPU")
    amp_by_default: bool = True
    #: submodules that stay in float32 inside the autocast region when training with AMP
    float32_under_amp: tuple[str, ...] = ()

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.model_structure: nn.Module = self.build(num_classes)
        self.model_name = self.name
        self.bug_id = 0
        self.dataset_name = ""
        self.metadata: dict = {}

    def build(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def build_reduced(self, num_classes: int) -> nn.Module:
        """Fault 1's "suboptimal structure": fewer blocks or layers than the healthy network."""
        raise UsageError(f"fault 1 (suboptimal structure) is not defined for architecture {self.name!r}")

    @classmethod
    def has_reduced_variant(cls) -> bool:
        """Whether the architecture declares fault 1's reduced variant (overrides :meth:`build_reduced`)."""
        return cls.build_reduced is not MyModel.build_reduced

    @property
    def val_acc(self) -> float | None:
        return self.metadata.get("val_acc")

    @property
    def test_acc(self) -> float | None:
        return self.metadata.get("test_acc")

    def input_size(self, dataset_size: int | None) -> int | None:
        """The side length this architecture sees for a dataset of the given size."""
        return None if dataset_size is None else max(dataset_size, self.min_input_size)


def torchvision_architecture(name: str, builder: Callable[..., nn.Module], min_input_size: int = 32) -> type[MyModel]:
    """A ``MyModel`` class for any torchvision builder taking ``num_classes``: one line adds an architecture,
    ``register_model(torchvision_architecture("mobilenet", torchvision.models.mobilenet_v3_small))``.

    Such an architecture has no reduced variant, so fault 1 is refused for it with a clear error.
    """
    return type(f"{name.capitalize()}Model", (MyModel,), {
        "name": name, "min_input_size": min_input_size,
        "build": lambda self, num_classes: builder(weights=None, num_classes=num_classes),
        "__doc__": f"torchvision's {getattr(builder, '__name__', name)}, randomly initialised.",
    })
