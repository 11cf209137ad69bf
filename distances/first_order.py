"""The ``first-order`` distance mode: DeepFool's first linearisation, without the iteration.

Per input, min over the top ``candidates`` classes k of |l_k − l_0| / ‖∇(l_k − l_0)‖ (one forward pass and the
candidates' input gradients), a cheaper estimate of DeepFool's distance that is exact for a linear classifier.
``first-order:2`` is fused: the one forward pass whose graph gives the gradient of l_1 − l_0 also gives the clean
logits (one forward and one backward pass in all), where the other modes first run the network without a graph.
"""

from __future__ import annotations

import torch

from Attacker import NORM_EPSILON, STEP_STABILISER, Attacker


class FirstOrderDistance(Attacker):
    """The first-order distance, with the attacker's interface; the final point is the one DeepFool's first step
    reaches (with overshoot, clipped), whose label says whether that step alone succeeds."""

    @property
    def fuses_clean_pass(self) -> bool:
        """Two candidates (one gradient) off CUDA graphs: the clean logits come from the gradient's own pass."""
        return self.candidates == 2 and not self.cuda_graphs

    def _measure(self, x0: torch.Tensor, clean):
        if clean is None:
            return self._fused_first_order(x0)
        clean_logits, classes = clean
        return clean_logits, classes, *self._first_order(x0, classes)

    def _first_order(self, x0: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first linearisation's distance to the nearest candidate boundary, min_k |l_k − l_0| /
        ‖∇(l_k − l_0)‖ (foolbox's guard against a zero gradient in the division), and the point DeepFool's
        first step reaches (with overshoot, clipped), whose label says whether that step alone succeeds."""
        losses, grads, _ = self._gradients(x0, classes)
        return self._first_step(x0, losses, grads)

    def _fused_first_order(self, x0: torch.Tensor):
        """``first-order:2`` in one forward and one backward pass: the forward pass whose graph gives the input
        gradient of ``l_1 − l_0`` also gives the clean logits (unfused, the network first runs once more without a
        graph); the same arithmetic as :meth:`_first_order` on the same logits, so the same distances."""
        inputs = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(inputs).to(self.dtype)
            clean_logits, classes = self._clean(x0, logits.detach())
            if classes.shape[1] < 2 or not logits.requires_grad:
                return clean_logits, classes, *self._first_order(x0, classes)
            rows = torch.arange(len(x0), device=x0.device)
            difference = logits[rows, classes[:, 1]] - logits[rows, classes[:, 0]]
            grads = torch.autograd.grad(difference.sum(), inputs)[0]
        losses = torch.nan_to_num(difference.detach(), nan=0.0)[:, None]
        grads = torch.nan_to_num(grads, nan=0.0, posinf=0.0, neginf=0.0)[:, None]
        return clean_logits, classes, *self._first_step(x0, losses, grads)

    def _first_step(self, x0: torch.Tensor, losses: torch.Tensor, grads: torch.Tensor):
        """The distance to the nearest linearised candidate boundary and the point DeepFool's first step reaches
        (with overshoot, clipped), from the logit differences (n, K-1) and their input gradients."""
        grad_norms = grads.flatten(2).norm(dim=2)
        boundary = losses.abs() / (grad_norms + NORM_EPSILON)
        best = boundary.argmin(dim=1, keepdim=True)
        distances = boundary.gather(1, best).squeeze(1)
        best_grad = grads[torch.arange(len(x0), device=x0.device), best.squeeze(1)]
        scale = (distances + STEP_STABILISER) / (grad_norms.gather(1, best).squeeze(1) + NORM_EPSILON)
        low, high = self.bounds
        x_step = (x0 + (1.0 + self.overshoot) * scale.view(-1, *[1] * (x0.ndim - 1)) * best_grad).clamp(low, high)
        return distances, x_step
