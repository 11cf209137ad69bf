"""The training and evaluation loop for one network.

Adam, cross-entropy and StepLR with a ``TrainingRecipe``'s numbers (the paper's by default: lr 1e-4,
weight decay 1e-4, StepLR 30 epochs ×0.1, 30 epochs).

On CUDA, mixed precision (bfloat16 autocast, or float16 with a gradient scaler where
bfloat16 is missing) and channels-last memory are on by default for training; evaluation runs in
full precision, so the recorded accuracies are those of the float32 network the attacker uses.
Submodules named in ``float32_modules`` run in float32 inside the autocast region (an architecture's
``float32_under_amp``), without changing the network or its checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import replace

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from storage.files import atomic_save_figure, pyplot
from storage.settings import PAPER_RECIPE, TrainingRecipe
from utils import choose_device

#: validation accuracy points by which batch statistics must beat the running ones for the running statistics to be
#: called stale and re-estimated (:meth:`ModelTrainer.settle_batch_norm`)
STALE_BATCH_NORM = 0.05
BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batch_norm_layers(network: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``network`` that keep running statistics."""
    return [layer for layer in network.modules()
            if isinstance(layer, BATCH_NORM) and layer.track_running_stats]


class ModelTrainer:
    """Trains ``pytorch_model`` in place; fault injection may change ``optimizer``, ``criteria``, ``epochs``.

    ``recipe`` gives the numbers (the pipeline passes the version's); ``epochs``, ``lr``, ... override it
    one by one, as the paper's scripts call it.
    """

    def __init__(self, pytorch_model: nn.Module, device=None, epochs: int | None = None, lr: float | None = None,
                 weight_decay: float | None = None, step_size: int | None = None, gamma: float | None = None, *,
                 recipe: TrainingRecipe = PAPER_RECIPE, amp: bool | None = None, channels_last: bool | None = None,
                 val_every: int | None = None, progress: bool = True, description: str = "train",
                 float32_modules: tuple[str, ...] = ()):
        overrides = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, step_size=step_size, gamma=gamma)
        recipe = replace(recipe, **{name: value for name, value in overrides.items() if value is not None})
        self.device = choose_device(device)
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda if amp is None else amp
        self.channels_last = on_cuda if channels_last is None else channels_last
        bf16_ok = not on_cuda or torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.bfloat16 if bf16_ok else torch.float16
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = pytorch_model.to(self.device, memory_format=memory_format)
        self.epochs = recipe.epochs
        self.lr = recipe.lr
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                          fused=fused)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=recipe.step_size,
                                                         gamma=recipe.gamma)
        self.criteria: nn.Module = nn.CrossEntropyLoss()
        self.val_every = val_every
        self.progress = progress
        self.description = description
        self._scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        for name in float32_modules:
            self.model.get_submodule(name)  # a misspelt name fails here, not silently
        self.float32_modules = tuple(float32_modules)

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
        return x, y.to(self.device, non_blocking=True)

    def device_batches(self, loader):
        """The training batches of ``loader`` on the device, in the training memory format; a
        ``TensorLoader`` resizes them there (see ``TensorLoader.on``)."""
        if hasattr(loader, "on"):
            loader = loader.on(self.device)
        for x, y in loader:
            yield self._to_device(x, y)

    def train_model(self, train_loader, val_loader=None, settle: bool = True) -> dict:
        """Train for ``self.epochs``; validate every ``val_every`` epochs and after the last one; then, with
        ``settle`` and a validation loader, re-estimate batch-norm statistics that never settled
        (:meth:`settle_batch_norm`).

        Returns the history: per-epoch training loss and accuracy, the validation points, and ``batch_norm``.
        """
        val_every = self.val_every or max(1, self.epochs // 5)
        history = {"epoch": [], "train_loss": [], "train_acc": [], "val_epoch": [], "val_loss": [], "val_acc": []}
        started = time.perf_counter()
        bar = tqdm(range(1, self.epochs + 1), desc=self.description, unit="epoch", disable=not self.progress,
                   leave=False)
        for epoch in bar:
            with self.float32_regions():
                loss, accuracy = self._train_epoch(train_loader)
            if not torch.isfinite(torch.tensor(loss)):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss})")
            history["epoch"].append(epoch)
            history["train_loss"].append(loss)
            history["train_acc"].append(accuracy)
            postfix = {"loss": f"{loss:.3f}", "acc": f"{accuracy:.3f}"}
            if val_loader is not None and (epoch % val_every == 0 or epoch == self.epochs):
                val_acc, val_loss = self.evaluate_model(val_loader)
                history["val_epoch"].append(epoch)
                history["val_loss"].append(val_loss)
                history["val_acc"].append(val_acc)
                postfix["val_acc"] = f"{val_acc:.3f}"
            bar.set_postfix(postfix)
        history["seconds"] = time.perf_counter() - started
        if val_loader is not None and settle:
            history["batch_norm"] = self.settle_batch_norm(train_loader, val_loader)
        return history

    def settle_batch_norm(self, train_loader, val_loader) -> dict | None:
        """Re-estimate the batch-norm running statistics where they never settled; what was found, or None for a
        network without batch norm.

        A running statistic is an exponential average (``momentum``, 0.1 in most layers, 0.01 in MobileNetV3's):
        with few training steps it still weighs its initial value and the early weights', and the network in
        evaluation mode answers far worse than with its batch statistics (the README's MobileNetV3 on DIGITS:
        0.10 against 0.98 on validation). Where the validation accuracy with batch statistics exceeds the
        evaluation-mode one by more than :data:`STALE_BATCH_NORM` the statistics are recomputed as plain averages
        over one pass of the training inputs (``torch.optim.swa_utils.update_bn``), and kept only if the
        validation accuracy rises. A network whose statistics settled is left as it is (its checkpoint and
        numbers do not change)."""
        if not batch_norm_layers(self.model):
            return None
        accuracy, _ = self.evaluate_model(val_loader)
        with_batch_statistics = self.accuracy_with_batch_statistics(val_loader)
        found = {"val_acc": accuracy, "val_acc_batch_statistics": with_batch_statistics, "reestimated": False}
        if with_batch_statistics - accuracy <= STALE_BATCH_NORM:
            return found
        kept = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
        torch.optim.swa_utils.update_bn(self.device_batches(train_loader), self.model, self.device)
        reestimated, _ = self.evaluate_model(val_loader)
        if reestimated > accuracy:
            found.update(reestimated=True, val_acc_reestimated=reestimated)
        else:
            self.model.load_state_dict(kept)
        return found

    def accuracy_with_batch_statistics(self, loader) -> float:
        """The accuracy on ``loader`` with every batch-norm layer normalising by its batch's statistics (training
        mode), on a copy: this network's running statistics do not move."""
        probe = copy.deepcopy(self.model).eval()
        for layer in batch_norm_layers(probe):
            layer.train()
        correct = seen = 0
        with torch.no_grad():
            for x, y in loader:
                x, y = self._to_device(x, y)
                correct += int((probe(x).argmax(dim=1) == y).sum())
                seen += len(y)
        return correct / max(seen, 1)

    @contextlib.contextmanager
    def float32_regions(self):
        """While open (and AMP is on), ``float32_modules`` run with autocast off and float32 inputs.

        Forward hooks, not wrappers: the network's structure and ``state_dict`` keys stay the same.
        """
        if not (self.amp and self.float32_modules):
            yield
            return
        handles, regions = [], []

        def enter(module, args):
            region = torch.autocast(device_type=self.device.type, enabled=False)
            region.__enter__()
            regions.append(region)
            return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

        def leave(module, args, output):
            regions.pop().__exit__(None, None, None)

        try:
            for name in self.float32_modules:
                module = self.model.get_submodule(name)
                handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
            yield
        finally:
            for handle in handles:
                handle.remove()
            while regions:  # a forward pass that raised inside a region
                regions.pop().__exit__(None, None, None)

    def _train_epoch(self, loader) -> tuple[float, float]:
        self.model.train()
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for x, y in self.device_batches(loader):
            loss, logits = self.train_step(x, y)
            total_loss += loss * len(y)
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(y)
        self.scheduler.step()
        return total_loss.item() / max(seen, 1), correct.item() / max(seen, 1)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on a batch already on the device: ``(loss, logits)``, both detached.

        The forward pass under autocast (when AMP is on), the loss in float32.
        """
        with self._autocast():
            logits = self.model(x)
        loss = self.criteria(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self._scaler.scale(loss).backward()
        self._scaler.step(self.optimizer)
        self._scaler.update()
        return loss.detach(), logits.detach()

    @torch.no_grad()
    def evaluate_model(self, loader) -> tuple[float, float]:
        """``(accuracy, mean loss)`` of the network on ``loader``, in evaluation mode."""
        self.model.eval()
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            x, y = self._to_device(x, y)
            logits = self.model(x)  # full precision: the accuracy of the version as the attacker sees it
            total_loss += self.criteria(logits.float(), y) * len(y)
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(y)
        return correct.item() / max(seen, 1), total_loss.item() / max(seen, 1)


def save_loss_curve(history: dict, path, title: str = "") -> None:
    """Training loss per epoch and validation loss and accuracy where they were measured (accuracy on its own
    axis, right; a star for the accuracy after stale batch-norm statistics were re-estimated), whole epochs on
    the x axis, one legend below the axes."""
    plt = pyplot()
    figure, loss_axis = plt.subplots(figsize=(6, 4))
    lines = loss_axis.plot(history["epoch"], history["train_loss"], marker="o", label="training loss")
    if history.get("val_loss"):
        lines += loss_axis.plot(history["val_epoch"], history["val_loss"], marker="s", label="validation loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    loss_axis.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    if history.get("val_acc"):
        acc_axis = loss_axis.twinx()
        lines += acc_axis.plot(history["val_epoch"], history["val_acc"], color="tab:green", marker="^",
                               label="validation accuracy (right)")
        settled = history.get("batch_norm") or {}
        if settled.get("reestimated"):  # what the saved network answers: its statistics re-estimated after training
            lines += acc_axis.plot(history["val_epoch"][-1:], [settled["val_acc_reestimated"]], color="tab:green",
                                   marker="*", markersize=12, linestyle="none",
                                   label="validation accuracy, batch norm re-estimated")
        acc_axis.set_ylabel("accuracy")
        acc_axis.set_ylim(0, 1.02)
    loss_axis.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(lines), 2),
                     fontsize=8, frameon=False)
    loss_axis.set_title(title)
    figure.tight_layout()
    atomic_save_figure(path, figure)
