"""DenseNet-121 and its fault-1 variant (an activation-free convolutional stem before the stock network)."""

import torch
import torch.nn as nn
from torchvision.models import DenseNet

from mymodel.base import MyModel, register_model


class DenseNet121(DenseNet):
    """torchvision's DenseNet-121 (same ``state_dict``) whose final ReLU is a module, not ``F.relu``.

    Fault 3 removes activations by replacing ReLU modules; a functional ReLU would survive it.
    """

    def __init__(self, num_classes: int):
        super().__init__(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                         num_classes=num_classes)
        self.final_relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final_relu(self.features(x))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(out)


class DenseNetWithStem(nn.Module):
    """The paper's "suboptimal structure" for DenseNet: three 3×3 stride-1 convolutions without
    activations (3→64→128→3) in front of the stock features, whose final ReLU is left out."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, kernel_size=3, stride=1, padding=1)
        self.conv3 = nn.Conv2d(128, 3, kernel_size=3, stride=1, padding=1)
        self.densenet = DenseNet121(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.densenet.features(self.conv3(self.conv2(self.conv1(x))))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.densenet.classifier(out)


@register_model
class DenseNetModel(MyModel):
    name = "densenet"
    min_input_size = 32  # stride-2 stem, max-pool and three 2×2 transition pools

    def build(self, num_classes: int) -> nn.Module:
        return DenseNet121(num_classes)

    def build_reduced(self, num_classes: int) -> nn.Module:
        return DenseNetWithStem(num_classes)
