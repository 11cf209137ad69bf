"""The ``feature`` distance mode: each input's distance to a version's decision boundary measured at the
penultimate layer instead of the input, as fDBD does (Liu & Qin, ICML 2024) — one forward pass instead of
DeepFool's iterations.

The head is the last module with parameters of the network (``penultimate_head``); its input ``z`` is the
features. Where that module is a linear layer whose output is the network's output (ResNet, DenseNet, VGG,
AlexNet, MobileNet), the distance to the boundary with class k is exact and closed-form:
``(l_c − l_k) / ‖w_c − w_k‖`` (c the predicted class; ``l = Wz + b``), the smallest over the top ``candidates``
classes, as DeepFool's candidates. Otherwise (SqueezeNet's convolutional head) it is one first-order step
through the head: ``|l_c − l_k| / ‖∇_z(l_c − l_k)‖``.

fDBD's own score (``selection/feature_scores.py``) needs two more numbers per input, kept in the mode's caches:
the mean of those distances over *all* other classes, and the features' distance to their training mean. The
likelihood-ratio scores (``selection/likelihood_ratio.py``) read the features themselves, kept as ``features``: ``z``
as it is for a linear head, its channels' means over the spatial positions for a convolutional one (SqueezeNet's
512 × 13 × 13 map at 224 pixels would be 86,528 numbers per input to cache and a covariance matrix of that side to
fit; global average pooling gives the channel descriptor Mahalanobis detectors use for convolutional features).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

import ModelManager
from Attacker import NORM_EPSILON, STEP_STABILISER, Attacker, AttackResult
from mydataset.base import resize_batch
from utils import UsageError


def penultimate_head(network: nn.Module) -> nn.Module:
    """The last module (in registration order) holding parameters of its own: its input is the penultimate
    features."""
    owners = [module for module in network.modules() if any(True for _ in module.parameters(recurse=False))]
    if not owners:
        raise UsageError(f"{type(network).__name__} has no layer with parameters: no feature space to measure in")
    return owners[-1]


class FeatureDistance(Attacker):
    """The ``feature`` mode's measurement, with the attacker's interface (``attack``, ``attack_loader``)."""

    def __init__(self, pytorch_model: nn.Module, device=None, candidates: int = 10, overshoot: float = 0.02,
                 image_size: int | None = None, check_success: bool = True, feature_mean=None, **_graph_options):
        super().__init__(pytorch_model, device, candidates=candidates, overshoot=overshoot, image_size=image_size,
                         cuda_graphs=False, check_success=check_success)
        self.model = self.model.to(memory_format=torch.contiguous_format)
        self.memory_format = torch.contiguous_format
        self.head = penultimate_head(self.model)
        #: the features' mean over the version's training inputs (:meth:`fit_feature_mean`); without it the
        #: deviations (fDBD's denominator) are not measured
        self.feature_mean = None if feature_mean is None else torch.as_tensor(feature_mean).to(self.device,
                                                                                                 self.dtype)
        self._linear: bool | None = None  # decided on the first batch
        self._weight_distances: torch.Tensor | None = None

    @classmethod
    def from_settings(cls, pytorch_model: nn.Module, settings, device=None, **options) -> "FeatureDistance":
        """The measurement with ``settings``' candidate classes and overshoot (the feature mode takes no steps)."""
        return cls(pytorch_model, device, candidates=settings.candidates, overshoot=settings.overshoot, **options)

    @property
    def linear_head(self) -> bool | None:
        """Whether the closed form applies (None until a batch has been measured)."""
        return self._linear

    def features(self, x: torch.Tensor, replace: torch.Tensor | None = None, grad: bool = False):
        """``(logits, z)`` of a batch: the network's logits and the head's input; with ``replace`` the head is fed
        that instead, with ``grad`` ``z`` is a leaf the logits can be differentiated by."""
        seen = {}

        def hook(module, args):
            z = args[0] if replace is None else replace
            if grad:
                z = z.detach().requires_grad_(True)
            seen["z"] = z
            return (z, *args[1:])

        handle = self.head.register_forward_pre_hook(hook)
        try:
            with torch.set_grad_enabled(grad):
                logits = self.model(x).to(self.dtype)
        finally:
            handle.remove()
        return logits, seen["z"]

    def fit_feature_mean(self, loader) -> torch.Tensor:
        """The features' mean over ``loader``'s inputs (the version's training split), kept for the deviations."""
        total, count = None, 0
        for batch in loader:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = resize_batch(images.to(self.device, dtype=self.dtype), self.image_size)
            _, z = self.features(x)
            summed = z.flatten(1).to(torch.float64).sum(dim=0)
            total = summed if total is None else total + summed
            count += len(x)
        if not count:
            raise UsageError("no training input to take the features' mean over")
        self.feature_mean = (total / count).to(self.dtype)
        return self.feature_mean

    def attack(self, images: torch.Tensor) -> AttackResult:
        """Feature-space distances (and fDBD's parts) of a batch of images."""
        x = resize_batch(images.to(self.device, dtype=self.dtype), self.image_size)
        logits, z = self.features(x, grad=not self._linear)  # the first batch with gradients: either way fits
        if self._linear is None:  # the first batch: is the network's output the head's, a linear map of z?
            with torch.no_grad():
                self._linear = isinstance(self.head, nn.Linear) and torch.equal(logits, self.head(z).to(self.dtype))
        if self._linear:
            gaps, denominators, directions = self._linear_parts(logits.detach())
        else:
            gaps, denominators, directions = self._first_order_parts(logits, z)
        logits = logits.detach()
        if not torch.isfinite(logits).all():
            raise UsageError("the network produced non-finite logits (NaN or inf): its weights are broken")
        classes = logits.topk(min(self.candidates, logits.shape[1]), dim=1).indices
        labels = classes[:, 0]
        all_distances = gaps / denominators.clamp_min(NORM_EPSILON)
        all_distances.scatter_(1, labels[:, None], float("inf"))  # the predicted class has no boundary with itself
        candidate_distances = all_distances.gather(1, classes[:, 1:])
        distances, nearest = candidate_distances.min(dim=1)
        margins = all_distances.masked_fill(torch.isinf(all_distances), 0.0).sum(dim=1) / (logits.shape[1] - 1)
        success = None
        if self.check_success:
            target = classes[:, 1:].gather(1, nearest[:, None])[:, 0]
            step = directions(target)
            step = step / step.flatten(1).norm(dim=1).clamp_min(NORM_EPSILON).view(-1, *[1] * (step.ndim - 1))
            scale = ((1 + self.overshoot) * (distances + STEP_STABILISER)).view(-1, *[1] * (step.ndim - 1))
            moved, _ = self.features(x, replace=z.detach() + scale * step)
            success = (moved.argmax(dim=1) != labels).cpu().numpy()
        deviations = None
        if self.feature_mean is not None:
            deviations = (z.detach().flatten(1) - self.feature_mean).norm(dim=1).cpu().numpy()
        return AttackResult(distances.detach().cpu().numpy(), labels.cpu().numpy(), success,
                            logits.softmax(dim=1).cpu().numpy(), logits=logits.cpu().numpy(),
                            outputs=self._outputs(margins.detach().cpu().numpy(), deviations, feature_vectors(z)))

    @staticmethod
    def _outputs(margins: np.ndarray, deviations: np.ndarray | None, features: np.ndarray) -> dict[str, np.ndarray]:
        """The mode's outputs: fDBD's parts (the deviations once the training features' mean is known) and the
        features."""
        return {"feature_margins": margins, **({"feature_deviations": deviations} if deviations is not None else {}),
                "features": features}

    def _linear_parts(self, logits: torch.Tensor):
        """Closed form: the logit gaps l_c − l_k and ‖w_c − w_k‖ for every class k, and the step towards k."""
        weight = self.head.weight.to(self.dtype)
        if self._weight_distances is None:
            self._weight_distances = torch.cdist(weight[None], weight[None])[0]
        predicted = logits.argmax(dim=1)
        gaps = logits.gather(1, predicted[:, None]) - logits
        return gaps, self._weight_distances[predicted], lambda target: weight[target] - weight[predicted]

    def _first_order_parts(self, logits: torch.Tensor, z: torch.Tensor):
        """One linearisation through a non-linear head: |l_c − l_k| and ‖∇_z(l_k − l_c)‖ for every class k."""
        predicted = logits.detach().argmax(dim=1)
        clean = logits.gather(1, predicted[:, None])[:, 0]
        gradients = []
        for k in range(logits.shape[1]):
            difference = (logits[:, k] - clean).sum()
            gradient, = torch.autograd.grad(difference, z, retain_graph=k < logits.shape[1] - 1, allow_unused=True)
            gradients.append(torch.zeros_like(z) if gradient is None else gradient)
        gradients = torch.stack(gradients, dim=1)  # inputs × classes × feature dims
        norms = gradients.flatten(2).norm(dim=2)
        gaps = (clean[:, None] - logits).detach().abs()
        rows = torch.arange(len(z), device=z.device)
        return gaps, norms, lambda target: gradients[rows, target]


def feature_vectors(z: torch.Tensor) -> np.ndarray:
    """One feature vector per input (the ``features`` output): the head's input ``z`` as it is where it is one vector
    per input, its channels' means over the remaining (spatial) axes where it is a map."""
    z = z.detach()
    return (z.flatten(2).mean(dim=2) if z.ndim > 2 else z).cpu().numpy()


def training_feature_mean(attacker, model, data, batch_size: int) -> None:
    """Give a ``feature`` mode measurement its version's training features' mean (fDBD's reference point), computed
    once per process and version (the cache step of every shift needs the same); any other attacker is left as
    it is."""
    if not isinstance(attacker, FeatureDistance):
        return
    key = (model.model_name, data.dataset_name, data.bug_id, model.metadata.get("checkpoint_sha256"),
           model.metadata.get("image_size"), len(data.y_train), str(attacker.device), attacker.dtype)
    if key[3] is None or key not in _TRAINING_MEANS:
        mean = attacker.fit_feature_mean(ModelManager.loader_for(model, data, "train", batch_size))
        if key[3] is not None:
            _TRAINING_MEANS[key] = mean
    attacker.feature_mean = _TRAINING_MEANS.get(key, attacker.feature_mean)


#: the training features' means this process has computed, by version (checkpoint fingerprint) and device
_TRAINING_MEANS: dict = {}


def fdbd(margins: np.ndarray, deviations: np.ndarray) -> np.ndarray:
    """fDBD's score: the mean feature distance to the other classes' boundaries over the features' distance to
    their training mean (0 deviations give the largest finite score)."""
    deviations = np.asarray(deviations, dtype=np.float64)
    return np.asarray(margins, dtype=np.float64) / np.maximum(deviations, np.finfo(np.float64).tiny)
