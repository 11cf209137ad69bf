"""One small class per architecture, each entered in ``MODELS`` by its ``@register_model`` line.

To add an architecture, write a module here holding a ``MyModel`` subclass decorated ``@register_model``:
every module of this package is imported below, and presets, ``--models`` and the tests read the registry.
"""

import importlib
import pkgutil

from mymodel.base import MODELS, MyModel, register_model, torchvision_architecture

# isort: off
# The paper's five first, in the paper's order: registration order is the canonical order of the grid, of a
# version set's members and of the tables (the last of the tie rules: higher validation accuracy comes first).
from mymodel.resnet import ResNetModel
from mymodel.alexnet import AlexNetModel
from mymodel.densenet import DenseNetModel
from mymodel.vgg import VGG16Model
from mymodel.squeezenet import SqueezeNetModel
# isort: on

for _module in pkgutil.iter_modules(__path__):  # any other architecture module, after them
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "MyModel", "register_model", "torchvision_architecture", "ResNetModel", "AlexNetModel",
           "DenseNetModel", "VGG16Model", "SqueezeNetModel"]
