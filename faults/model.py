"""The model faults (1-3): what each does to a network, and what it needs of an architecture.

A model fault is applied as ``apply(network, architecture) -> network`` (``architecture``: the ``MyModel``, None
for a bare module). Its ``unsupported_by`` check receives an architecture class and returns None where the
architecture can carry the fault, otherwise why not, in words; it is checked on the architecture's network built
on the meta device (structure only: no memory, no initialisation). ``FaultInjector.FAULT_TABLE`` names them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from utils import UsageError


def reduce_structure(network: nn.Module, architecture) -> nn.Module:
    """Fault 1: the architecture's reduced variant (fewer blocks or layers), freshly built."""
    if architecture is None:
        raise UsageError("fault 1 needs the architecture's reduced variant: pass the MyModel, not the nn.Module")
    return architecture.build_reduced(architecture.num_classes)


def without_reduced_variant(architecture: type) -> str | None:
    """Fault 1 needs the architecture to declare its reduced variant (``build_reduced``)."""
    if not architecture.has_reduced_variant():
        return "it declares no reduced variant (MyModel.build_reduced)"
    return None


def widenable(conv: nn.Module) -> bool:
    """A convolution fault 2 widens: 2-D, stride 1, a kernel above 1×1, no dilation."""
    return (isinstance(conv, nn.Conv2d) and conv.stride == (1, 1) and conv.kernel_size != (1, 1)
            and conv.dilation == (1, 1))


def widen_filters(network: nn.Module, architecture=None, size: int = 5) -> nn.Module:
    """Fault 2: every stride-1 convolution with a kernel above 1×1 becomes a fresh ``size``×``size`` one.

    Padding keeps the output shape ("same"), so the rest of the network is untouched.
    """
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if widenable(child):
                wide = nn.Conv2d(child.in_channels, child.out_channels, size, stride=1, padding=size // 2,
                                 groups=child.groups, bias=child.bias is not None)
                setattr(parent, name, wide.to(child.weight.device, child.weight.dtype))
    return network


def without_widenable_filters(architecture: type) -> str | None:
    """Fault 2 needs a stride-1 convolution with a kernel above 1×1 to widen."""
    if not any(widenable(m) for m in meta_network(architecture).modules()):
        return "it has no stride-1 convolution with a kernel above 1x1 to widen"
    return None


#: the activation modules fault 3 removes: every elementwise non-linearity torch.nn has (torchvision's networks
#: use ReLU, ReLU6, Hardswish, Hardsigmoid, SiLU, GELU, Sigmoid); a shape-changing one (GLU) is not among them
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
               nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
               nn.LogSigmoid, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold)
#: the same non-linearities called as functions (``F.relu``, ``torch.sigmoid``, ``x.relu_()``), which fault 3
#: cannot remove: an architecture whose forward pass calls one cannot carry it
FUNCTIONAL_ACTIVATIONS = frozenset(
    name + suffix for name in ("relu", "relu6", "hardtanh", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu",
                               "gelu", "silu", "mish", "hardswish", "hardsigmoid", "sigmoid", "tanh", "softplus",
                               "softsign", "logsigmoid", "tanhshrink", "softshrink", "hardshrink", "threshold")
    for suffix in ("", "_"))


def remove_activations(network: nn.Module, architecture=None) -> nn.Module:
    """Fault 3: every activation module (``ACTIVATIONS``) is replaced by the identity."""
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ACTIVATIONS):
                setattr(parent, name, nn.Identity())
    return network


def functional_activations(network: nn.Module, image_size: int, device: str = "meta") -> list[str]:
    """The activation functions ``network``'s forward pass calls (on an input of ``image_size``), by name."""
    called = []

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in FUNCTIONAL_ACTIVATIONS:
                called.append(name)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Recorder():
        network.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    return sorted(set(called))


def with_functional_activations(architecture: type) -> str | None:
    """Fault 3 needs every activation to be a module: one the forward pass calls as a function would survive.
    The forward pass runs on the meta device (no memory), or on the CPU where an operation has no meta kernel."""
    size = max(architecture.min_input_size, 32)
    try:
        left = functional_activations(remove_activations(meta_network(architecture)), size)
    except (RuntimeError, NotImplementedError):
        try:
            left = functional_activations(remove_activations(architecture(10).model_structure), size, "cpu")
        except Exception as exc:  # noqa: BLE001 - any failure of a user's network is a reason to give
            return f"its network failed a forward pass on a {size}x{size} input ({type(exc).__name__}: {exc})"
    if left:
        return (f"its forward pass calls {', '.join(left)} as a function, which fault 3 cannot remove (use "
                "activation modules such as nn.ReLU())")
    return None


def meta_network(architecture: type) -> nn.Module:
    """The architecture's healthy network on the meta device: its structure, no memory, no initialisation cost."""
    with torch.device("meta"):
        return architecture(10).model_structure
