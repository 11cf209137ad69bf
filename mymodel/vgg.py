"""VGG-16 and its fault-1 variant (the third convolution of blocks 3-5 dropped)."""

import torch.nn as nn
from torchvision.models import vgg16

from mymodel.base import MyModel, register_model

#: ``features`` indices of the third convolution (and its ReLU) of blocks 3, 4 and 5
DROPPED_FEATURES = (14, 15, 21, 22, 28, 29)


@register_model
class VGG16Model(MyModel):
    name = "vgg16"
    min_input_size = 32  # five 2×2 max-pools

    def build(self, num_classes: int) -> nn.Module:
        return vgg16(weights=None, num_classes=num_classes)

    def build_reduced(self, num_classes: int) -> nn.Module:
        """Ten instead of thirteen convolutions; classifier 25088→4096→classes with one dropout."""
        net = vgg16(weights=None, num_classes=num_classes)
        net.features = nn.Sequential(*(layer for i, layer in enumerate(net.features) if i not in DROPPED_FEATURES))
        net.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                                       nn.Linear(4096, num_classes))
        return net
