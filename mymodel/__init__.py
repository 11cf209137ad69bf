"""One small class per architecture; ``ModelManager.MODELS`` is the registry."""

from mymodel.alexnet import AlexNetModel
from mymodel.base import MyModel, torchvision_architecture
from mymodel.densenet import DenseNetModel
from mymodel.resnet import ResNetModel
from mymodel.squeezenet import SqueezeNetModel
from mymodel.vgg import VGG16Model

__all__ = ["MyModel", "torchvision_architecture", "ResNetModel", "AlexNetModel", "DenseNetModel",
           "VGG16Model", "SqueezeNetModel"]
