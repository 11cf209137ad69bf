"""ResNet-50 and its fault-1 variant (one bottleneck block per stage)."""

import torch.nn as nn
from torchvision.models import resnet50
from torchvision.models.resnet import Bottleneck, ResNet

from mymodel.base import MyModel, register_model


@register_model
class ResNetModel(MyModel):
    name = "resnet"
    min_input_size = 32

    def build(self, num_classes: int) -> nn.Module:
        return resnet50(weights=None, num_classes=num_classes)

    def build_reduced(self, num_classes: int) -> nn.Module:
        """Only the first bottleneck block of each of the four stages is kept (3-4-6-3 becomes 1-1-1-1)."""
        return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes)
