"""One small class per dataset; ``DatasetManager`` holds the registry and builds splits and loaders."""

from mydataset.base import MyDataset, RawSplits, TrainingDefaults
from mydataset.cifar10 import Cifar10
from mydataset.digits import Digits
from mydataset.released import ATS, COVIDX9A, CTSD, GTSRB, TSCD, TTS

__all__ = ["MyDataset", "RawSplits", "TrainingDefaults", "Digits", "Cifar10",
           "ATS", "CTSD", "GTSRB", "TSCD", "TTS", "COVIDX9A"]
