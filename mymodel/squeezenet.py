"""SqueezeNet 1.0 and its fault-1 variant (two Fire modules fewer)."""

import torch.nn as nn
from torchvision.models import squeezenet1_0

from mymodel.base import MyModel, register_model

#: ``features`` indices of the second Fire module (128→128) and of the Fire module 384→384
DROPPED_FIRES = (4, 9)


@register_model
class SqueezeNetModel(MyModel):
    name = "squeezenet"
    min_input_size = 32
    #: the head (dropout, final 1x1 convolution, ReLU, average pooling) in float32 under AMP: with it in
    #: bf16 a class's ReLU output died where float32 training kept it (docs/results.md, "On a GPU")
    float32_under_amp = ("classifier",)

    def build(self, num_classes: int) -> nn.Module:
        return squeezenet1_0(weights=None, num_classes=num_classes)

    def build_reduced(self, num_classes: int) -> nn.Module:
        net = squeezenet1_0(weights=None, num_classes=num_classes)
        net.features = nn.Sequential(*(layer for i, layer in enumerate(net.features) if i not in DROPPED_FIRES))
        return net
