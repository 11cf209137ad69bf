"""The life of a version: create, train, save, load, evaluate; and the architectures' registry by name.

A version is (architecture, dataset, fault). Its checkpoint ``{key}.pth`` is a plain ``state_dict``
(loadable with ``weights_only=True``); its metadata ``{key}.json`` holds what was measured on it.

Architectures register themselves (``@register_model`` in ``mymodel``): ``MODELS`` is that registry. The paper's
habit works too: a ``register_model(...)`` line (or a decorated ``MyModel`` class) at the end of this file.
What a training run asks for comes in whole, as a ``storage.settings.TrainSettings`` and a ``storage.settings.Roots``.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision

import DatasetManager
import FaultInjector
import mymodel
from ModelTrainer import STALE_BATCH_NORM, ModelTrainer, batch_norm_layers, save_loss_curve
from mymodel import MODELS, MyModel, register_model, torchvision_architecture  # noqa: F401 - for additions here
from storage.files import atomic_path, atomic_write_json, file_digest, is_fresh, safe_torch_load, save_torch
from storage.layout import (
    checkpoint_path,
    loss_curve_path,
    metadata_path,
    version_key,
)
from storage.metadata import check_image_size, paper_accuracy, read_metadata
from storage.settings import ATTACK_BATCH, DEFAULT_ROOTS, DEFAULT_TRAINING, Roots, TrainSettings
from utils import UsageError, choose_device, seed_everything, warn

MODES = ("load", "train", "evaluate")
#: a version whose validation or test accuracy is at most this far above chance (1 / classes) is warned of
CHANCE_MARGIN = 0.05
#: what else a caller measures on a version while its metadata is made: ``measure(model, data, device)`` may add
#: entries to ``model.metadata`` (the pipeline's training steps record the version's costs, ``distances/costs.py``)
Measure = Callable[[mymodel.MyModel, DatasetManager.MyData, torch.device], None]


def get_model_class(model_name: str) -> type[mymodel.MyModel]:
    """The registered architecture of a name, in any case (an unknown name is a UsageError)."""
    return MODELS.get_class(model_name)


def build_version(model_name: str, num_classes: int, structure_fault: int = 0,
                  fault_parameter: float | None = None) -> mymodel.MyModel:
    """The untrained network of a version: the architecture with its model fault (if any) built in."""
    model = get_model_class(model_name)(num_classes)
    return FaultInjector.inject_model_fault(model, structure_fault, fault_parameter)


def is_trained(model_root, model_name: str, dataset_name: str, bug_id: int) -> bool:
    """A version is finished when its metadata and the checkpoint it uses both exist."""
    return (metadata_path(model_root, model_name, dataset_name, bug_id).is_file()
            and checkpoint_path(model_root, model_name, dataset_name, bug_id).is_file())


def training_status(model_root, model_name: str, dataset_name: str, bug_id: int,
                    settings: TrainSettings) -> str | None:
    """None when the version exists as ``settings`` ask; otherwise why it must be (re)trained.

    A checkpoint without our metadata is one of the paper's: it is never retrained without --force.
    """
    base_bug = FaultInjector.checkpoint_fault(bug_id)
    if not checkpoint_path(model_root, model_name, dataset_name, base_bug).is_file():
        return "missing"
    base_meta = metadata_path(model_root, model_name, dataset_name, base_bug)
    if not base_meta.is_file():
        return None if base_bug == bug_id else "missing"
    recorded = read_metadata(base_meta).get("settings", {})
    requested = _as_built(settings, base_bug).recorded(
        DatasetManager.get_dataset(dataset_name).training_defaults(model_name))
    changed = [f"{name} {recorded[name]} -> {value}" for name, value in requested.items()
               if value is not None and name in recorded and recorded[name] != value]
    if changed:
        return "settings changed: " + ", ".join(changed)
    if not is_fresh([metadata_path(model_root, model_name, dataset_name, bug_id)], [base_meta]):
        return "missing"  # a test-data fault not yet measured on the current healthy weights
    return None


def create_model(model_name: str, dataset, mode: str = "load", bug_id: int | None = None, device=None, *,
                 settings: TrainSettings = DEFAULT_TRAINING, roots: Roots = DEFAULT_ROOTS,
                 progress: bool = True, measure: Measure | None = None) -> mymodel.MyModel:
    """Create a version of ``model_name`` on ``dataset`` (a name or a ``MyData``).

    ``mode="train"`` trains it as ``settings`` ask and writes checkpoint + metadata under ``roots.model``
    (test-data faults 10-12 reuse the healthy checkpoint, training it first if it is missing); ``"load"``
    reads them; ``"evaluate"`` loads and re-measures validation and test accuracy into the metadata.
    Returns the ``MyModel`` with ``model_structure`` on ``device`` in evaluation mode, ``val_acc``,
    ``test_acc``, ``image_size``. ``measure`` (:data:`Measure`) adds what else is measured into the metadata.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    architecture = get_model_class(model_name)  # the registry's spelling: 'SqueezeNet' gets squeezenet's defaults
    bug_id = FaultInjector.validate_bug_id(bug_id, DatasetManager.get_dataset(_dataset_name(dataset)))
    device = choose_device(device)
    if mode == "train" and FaultInjector.is_test_data_only(bug_id):
        return _derive_test_fault_version(architecture, dataset, bug_id, device, settings, roots, progress, measure)
    if mode == "train":
        return _train_version(architecture, dataset, bug_id, device, settings, roots, progress, measure)
    model = load_version(architecture.name, dataset, bug_id, device, roots=roots)
    if mode == "evaluate":
        data = _data_for(model, dataset, bug_id, roots, settings.batch_size)
        _measure_into_metadata(model, data, device, progress, measure)
        _save_metadata(model, roots.model)
    return model


def _dataset_name(dataset) -> str:
    return dataset.dataset_name if isinstance(dataset, DatasetManager.MyData) else str(dataset).upper()


def _dataset(dataset, bug_id: int, roots: Roots, fault_parameter: float | None = None) -> DatasetManager.MyData:
    """A ``MyData`` handed in as it is, or the named dataset with the version's data fault."""
    if isinstance(dataset, DatasetManager.MyData):
        return dataset
    return DatasetManager.create_dataset(dataset, bug_id=bug_id, data_root=roots.data, fault_parameter=fault_parameter)


def _as_built(settings: TrainSettings, bug_id: int) -> TrainSettings:
    """``settings`` with the fault's parameter as the version is built with it (a parametric fault's default
    when none was asked), so that its metadata records, and a rerun compares, the value really used."""
    return replace(settings, fault_parameter=FaultInjector.parameter_value(bug_id, settings.fault_parameter))


def _healthy_data(dataset, roots: Roots) -> DatasetManager.MyData:
    """The dataset's healthy splits, read only (class count, stored size): a ``MyData`` handed in, or the
    process's cached copy, so that loading a version never reads a dataset's files twice."""
    if isinstance(dataset, DatasetManager.MyData):
        return dataset
    return DatasetManager.shared_cache(str(roots.data)).get(dataset)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

def _data_for(model: mymodel.MyModel, dataset, bug_id: int, roots: Roots, batch_size: int | None,
              image_size: int | None = None) -> DatasetManager.MyData:
    """The version's data (with its data fault) at the size the version sees."""
    data = _dataset(dataset, bug_id, roots)
    size = image_size or model.metadata.get("image_size") or model.input_size(data.image_size or data.native_size)
    if size < model.min_input_size:
        raise UsageError(f"image size {size} is below {model.model_name}'s minimum of {model.min_input_size}; "
                         f"use --image-size {model.min_input_size} or more")
    return data.at(image_size=size, batch_size=batch_size or data.source.training_defaults(model.model_name).batch_size)


def _train_version(architecture: type[mymodel.MyModel], dataset, bug_id: int, device, settings: TrainSettings,
                   roots: Roots, progress: bool, measure: Measure | None) -> mymodel.MyModel:
    settings = _as_built(settings, bug_id)
    seed_everything(settings.seed)
    structure_fault = FaultInjector.structure_fault(bug_id)
    parameter = settings.fault_parameter
    data = _dataset(dataset, bug_id, roots, parameter if FaultInjector.is_kind(bug_id, "data") else None)
    model = build_version(architecture.name, data.num_classes, structure_fault,
                          parameter if structure_fault else None)
    data = _data_for(model, data, bug_id, roots, settings.batch_size, settings.image_size).at(seed=settings.seed)
    defaults = data.source.training_defaults(model.model_name)
    trainer = ModelTrainer(model.model_structure, device=device, recipe=settings.recipe(defaults), progress=progress,
                           amp=settings.amp if settings.amp is not None or model.amp_by_default else False,
                           float32_modules=model.float32_under_amp,
                           description=version_key(model.model_name, data.dataset_name, bug_id))
    FaultInjector.inject_hyperparameters_fault(trainer, bug_id,
                                               parameter if FaultInjector.is_kind(bug_id, "hyper-parameter") else None)
    # a faulty version is trained as its fault says, nothing repaired: too few epochs (fault 5) leave stale
    # batch-norm statistics as a developer's run would (the chance-level check still names them)
    history = trainer.train_model(data.train_loader, data.val_loader, settle=bug_id == FaultInjector.HEALTHY)
    settled = history.get("batch_norm") or {}
    if settled.get("reestimated"):
        print(f"note: {version_key(model.model_name, data.dataset_name, bug_id)}: its batch-norm running statistics "
              f"had not settled (validation accuracy {settled['val_acc']:.3f}, "
              f"{settled['val_acc_batch_statistics']:.3f} with batch statistics) and were re-estimated "
              f"over the training inputs: {settled['val_acc_reestimated']:.3f}", file=sys.stderr)
    model.model_structure = trainer.model.to(memory_format=torch.contiguous_format).eval()
    _describe(model, data.dataset_name, bug_id, structure_fault, origin="trained")
    as_run = replace(settings, batch_size=data.batch_size, image_size=data.image_size)
    model.metadata["settings"] = as_run.recorded(defaults)
    model.metadata.update(image_size=data.image_size, epochs=trainer.epochs, lr=trainer.lr,
                          weight_decay=trainer.optimizer.param_groups[0]["weight_decay"],
                          optimizer=type(trainer.optimizer).__name__, batch_size=data.batch_size, seed=settings.seed,
                          loss=type(trainer.criteria).__name__, train_seconds=round(history["seconds"], 2),
                          device=str(device), threads=torch.get_num_threads(), amp=trainer.amp,
                          amp_float32_modules=list(trainer.float32_modules) if trainer.amp else [], history=history)
    _measure_into_metadata(model, data, device, progress, measure)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.model_structure.state_dict().items()}
    path = checkpoint_path(roots.model, model.model_name, data.dataset_name, bug_id)
    save_loss_curve(history, loss_curve_path(roots.model, model.model_name, data.dataset_name, bug_id),
                    title=model.metadata["key"])
    # A checkpoint is never left without the metadata that describes it (one without is taken for the
    # paper's, and never retrained): the old checkpoint goes, the metadata is written, and the new
    # checkpoint comes last, its presence marking the version finished. A kill anywhere means a retrain.
    # The metadata records the checkpoint's SHA-256 (what the fit and cache steps' manifests name it by).
    path.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        save_torch(tmp, state)
        model.metadata["checkpoint_sha256"] = file_digest(tmp)
        _save_metadata(model, roots.model)
    return model


def _derive_test_fault_version(architecture: type[mymodel.MyModel], dataset, bug_id: int, device,
                               settings: TrainSettings, roots: Roots, progress: bool,
                               measure: Measure | None) -> mymodel.MyModel:
    """Faults 10-12 change only the test set: measure the healthy network on it (train it if needed)."""
    name, dataset_name = architecture.name, _dataset_name(dataset)
    if not is_trained(roots.model, name, dataset_name, FaultInjector.HEALTHY):
        _train_version(architecture, dataset_name, FaultInjector.HEALTHY, device, settings, roots, progress, measure)
    model = load_version(name, dataset_name, FaultInjector.HEALTHY, device, roots=roots)
    healthy = dict(model.metadata)
    model.bug_id = bug_id
    model.metadata.update(bug=bug_id, key=version_key(name, dataset_name, bug_id), origin="healthy weights",
                          fault=FaultInjector.fault_name(bug_id), created=_now())
    data = _data_for(model, dataset, bug_id, roots, settings.batch_size or healthy.get("batch_size"))
    _measure_into_metadata(model, data, device, progress, measure)
    _save_metadata(model, roots.model)
    return model


def _measure_into_metadata(model: mymodel.MyModel, data: DatasetManager.MyData, device, progress: bool,
                           measure: Measure | None) -> None:
    evaluator = ModelTrainer(model.model_structure, device=device, progress=progress)
    val_acc, val_loss = evaluator.evaluate_model(data.val_loader)
    test_acc, test_loss = evaluator.evaluate_model(data.test_loader)
    model.model_structure = evaluator.model.eval()
    model.metadata.update(val_acc=val_acc, val_loss=val_loss, test_acc=test_acc, test_loss=test_loss,
                          num_val=len(data.y_val), num_test=len(data.y_test), image_size=data.image_size)
    model.metadata["warnings"] = _accuracy_warnings(model, evaluator, data)
    for line in model.metadata["warnings"]:
        warn(line)
    if measure is not None:
        measure(model, data, device)


def _accuracy_warnings(model: mymodel.MyModel, evaluator: ModelTrainer, data: DatasetManager.MyData) -> list[str]:
    """A version whose validation or test accuracy is within :data:`CHANCE_MARGIN` of chance, said in one line
    (none: an empty list); where its batch-norm layers answer far better with batch statistics, the line names
    their stale running statistics as the cause."""
    metadata, chance = model.metadata, 1 / model.num_classes
    low = [f"{split} accuracy {metadata[key]:.3f}" for split, key in (("validation", "val_acc"), ("test", "test_acc"))
           if metadata[key] <= chance + CHANCE_MARGIN]
    if not low:
        return []
    line = f"{metadata['key']} is at chance: {' and '.join(low)}, against {chance:.3f} for {model.num_classes} classes"
    if batch_norm_layers(model.model_structure):
        with_batch_statistics = evaluator.accuracy_with_batch_statistics(data.val_loader)
        if with_batch_statistics - metadata["val_acc"] > STALE_BATCH_NORM:
            line += (f"; with batch statistics it reaches {with_batch_statistics:.3f} on validation: its batch-norm "
                     "running statistics are stale (too few training steps for their momentum); retrain it with "
                     "main_train_model.py --force (stale statistics are re-estimated after training) or more epochs")
    return [line]


def _describe(model: mymodel.MyModel, dataset_name: str, bug_id: int, structure_fault: int, origin: str) -> None:
    model.bug_id = bug_id
    model.dataset_name = dataset_name
    model.metadata.update(
        model=model.model_name, dataset=dataset_name, bug=bug_id,
        key=version_key(model.model_name, dataset_name, bug_id),
        checkpoint=checkpoint_path("", model.model_name, dataset_name, bug_id).name,
        fault=FaultInjector.fault_name(bug_id), structure_fault=structure_fault,
        num_classes=model.num_classes, origin=origin, created=_now(),
        versions={"python": platform.python_version(), "torch": torch.__version__,
                  "torchvision": torchvision.__version__, "numpy": np.__version__})


def _save_metadata(model: mymodel.MyModel, model_root) -> None:
    path = metadata_path(model_root, model.model_name, model.metadata["dataset"], model.bug_id)
    atomic_write_json(path, model.metadata)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

def load_version(model_name: str, dataset, bug_id: int, device=None, *,
                 roots: Roots = DEFAULT_ROOTS) -> mymodel.MyModel:
    """Load a version's checkpoint into its structure; metadata if present, else the paper's figures.

    A checkpoint without our metadata file is taken as one of the paper's released weights, built
    as the paper built them (its no-op faults left the healthy structure; the fault table says which).
    """
    dataset_name = _dataset_name(dataset)
    ckpt = checkpoint_path(roots.model, model_name, dataset_name, bug_id)
    meta_file = metadata_path(roots.model, model_name, dataset_name, bug_id)
    if not ckpt.is_file():
        raise UsageError(f"missing checkpoint {ckpt}: train it first with "
                         f"python main_train_model.py --datasets {dataset_name} --models {model_name} --bugs {bug_id}")
    state = safe_torch_load(ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{ckpt} is not a state_dict (a dict of tensors); replace it, or retrain it with --force")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise UsageError(f"{ckpt} holds NaN or infinite weights; replace it, or retrain it with --force")
    if meta_file.is_file():
        metadata = read_metadata(meta_file)
        check_image_size(metadata, meta_file, model_name, get_model_class(model_name).min_input_size)
        structure_fault = metadata.get("structure_fault", 0)
        num_classes = metadata.get("num_classes") or _healthy_data(dataset, roots).num_classes
    else:
        structure_fault = FaultInjector.paper_structure_fault(bug_id)
        num_classes = _healthy_data(dataset, roots).num_classes
        metadata = {}
    model = build_version(model_name, num_classes, structure_fault)
    _check_state_fits(state, model.model_structure, ckpt, model_name, num_classes, structure_fault)
    model.model_structure.load_state_dict(state, strict=True)
    model.model_structure.to(choose_device(device)).eval()
    model.bug_id = bug_id
    model.dataset_name = dataset_name
    source = DatasetManager.get_dataset(dataset_name)
    if metadata:
        model.metadata = metadata
    else:
        _describe(model, dataset_name, bug_id, structure_fault, origin="paper")
        model.metadata.update(paper_accuracy(dataset_name, model_name, bug_id))
    if not model.metadata.get("image_size"):
        model.metadata["image_size"] = model.input_size(source.image_size or _healthy_data(dataset, roots).native_size)
    return model


def _check_state_fits(state: dict, network: torch.nn.Module, path: Path, model_name: str, num_classes: int,
                      structure_fault: int) -> None:
    """A one-line explanation instead of torch's page-long error when a checkpoint does not fit."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        example = (mismatched or missing or unexpected)[0]
        raise UsageError(
            f"{path} does not fit {model_name} with {num_classes} classes (structure fault {structure_fault}): "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} wrongly shaped tensors "
            f"(e.g. {example}); is it a checkpoint of another architecture or dataset? Replace it, or retrain it "
            "with --force")


def loader_for(model: mymodel.MyModel, data: DatasetManager.MyData, split: str,
               batch_size: int | None = None) -> DatasetManager.TensorLoader:
    """A split's loader at the size the version sees, in attack batches (``settings.ATTACK_BATCH`` unless given)."""
    sized = data.at(image_size=model.metadata["image_size"], batch_size=batch_size or ATTACK_BATCH)
    return getattr(sized, f"{split}_loader")


class ModelManager:
    """``from ModelManager import ModelManager``, as in the paper repository.

    ``create_model`` is this module's function with the paper's default ``device=0`` (``cuda:0``, or the
    CPU where there is no CUDA); ``dataset`` is a name or a ``MyData``, model names are in any case, and
    keyword options (``model_root``, ``epochs``, ``lr``, ...) pass through. Every version it makes is
    remembered, and ``get_model`` returns it, as the paper's registry did.
    """

    model_list: dict[str, mymodel.MyModel] = {}

    @classmethod
    def create_model(cls, model_name: str, dataset, mode: str = "load", bug_id: int | None = None, device=0,
                     **options) -> mymodel.MyModel:
        settings, roots, progress = _settings_from_options(options)
        model = create_model(model_name, dataset, mode=mode, bug_id=bug_id, device=device, settings=settings,
                             roots=roots, progress=progress)
        cls.model_list[version_key(model.model_name, model.dataset_name, model.bug_id)] = model
        return model

    @classmethod
    def get_model(cls, model_name: str, dataset_name, bug_id: int | None = None) -> mymodel.MyModel:
        """A version made earlier by ``create_model`` in this process (``dataset_name``: a name or a ``MyData``)."""
        key = version_key(model_name, getattr(dataset_name, "dataset_name", dataset_name), bug_id)
        if key not in cls.model_list:
            made = ", ".join(cls.model_list) or "none yet"
            raise UsageError(f"version {key} has not been created in this process (made: {made}); "
                             "call ModelManager.create_model first")
        return cls.model_list[key]


def _settings_from_options(options: dict) -> tuple[TrainSettings, Roots, bool]:
    """The facade's keyword options as settings: ``model_root``, ``data_root``, ``progress`` and the fields of
    ``TrainSettings`` (``epochs``, ``lr``, ``batch_size``, ``seed``, ``image_size``, ``amp``)."""
    options = dict(options)
    roots = Roots(**{name: options.pop(f"{name}_root") for name in ("data", "model") if f"{name}_root" in options})
    progress = options.pop("progress", True)
    known = [field.name for field in fields(TrainSettings)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)} for create_model; known: model_root, data_root, "
                         f"progress, {', '.join(known)}")
    return TrainSettings(**options), roots, progress
