"""AlexNet and its fault-1 variant (one convolution and one hidden fully connected layer fewer)."""

import torch.nn as nn
from torchvision.models import alexnet

from mymodel.base import MyModel, register_model


@register_model
class AlexNetModel(MyModel):
    name = "alexnet"
    min_input_size = 63  # 11×11/4 convolution and three 3×3/2 max-pools

    def build(self, num_classes: int) -> nn.Module:
        return alexnet(weights=None, num_classes=num_classes)

    def build_reduced(self, num_classes: int) -> nn.Module:
        """The last convolution of ``features`` and its ReLU are dropped; classifier 9216→4096→classes."""
        net = alexnet(weights=None, num_classes=num_classes)
        layers = list(net.features)
        net.features = nn.Sequential(*layers[:10], layers[12])
        net.classifier = nn.Sequential(nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                                       nn.Linear(4096, num_classes))
        return net
