"""The network as the attack sees it: a frozen copy of the version's network in evaluation mode, its batch norms
folded to the per-channel affine maps they are, and the dtype its inputs and gradients take."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class FrozenBatchNorm(nn.Module):
    """An evaluation-mode batch norm as the per-channel affine map it is: ``x · scale + shift``.

    Same function (to float rounding); its backward pass is one multiplication, where
    ``native_batch_norm_backward`` was a quarter of DenseNet's attack time.
    """

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale + (norm.bias if norm.bias is not None else 0.0)
        self.register_buffer("scale", scale.detach())
        self.register_buffer("shift", shift.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)  # channels on dim 1, as for every batch norm
        return torch.addcmul(self.shift.view(shape), x, self.scale.view(shape))


def attack_dtype(network: nn.Module) -> torch.dtype:
    """float64 for a network whose floating-point parameters (or, without any, buffers) are float64;
    float32 otherwise: float32 networks, parameter-free ones, and half or bfloat16 ones (their
    inputs stay float32, as they always were)."""
    for tensors in (network.parameters(), network.buffers()):
        dtypes = {t.dtype for t in tensors if t.is_floating_point()}
        if dtypes:
            return torch.float64 if dtypes == {torch.float64} else torch.float32
    return torch.float32


def frozen_copy(network: nn.Module) -> nn.Module:
    """The network as the attack needs it, leaving the caller's untouched: a copy in evaluation mode,
    without parameter gradients, its batch norms (with running statistics) folded to affine maps."""
    frozen = copy.deepcopy(network).eval().requires_grad_(False)
    for parent in list(frozen.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.running_mean is not None:
                setattr(parent, name, FrozenBatchNorm(child))
    return frozen
