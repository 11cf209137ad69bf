"""Architectures: healthy networks are torchvision's, fault-1 variants follow the paper's,
checkpoints are plain state_dicts, and the registry adds an architecture in one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import unused_name
from torchvision.models.squeezenet import Fire

import FaultInjector
import ModelManager
import mymodel
from mymodel.densenet import DenseNet121, DenseNetWithStem
from storage.settings import Roots, TrainSettings
from utils import UsageError

# tiny networks gain nothing from threads; on a busy machine threads slow them down
pytestmark = pytest.mark.usefixtures("single_thread")

NUM_CLASSES = 7
TORCHVISION_BUILDERS = {
    "resnet": torchvision.models.resnet50,
    "alexnet": torchvision.models.alexnet,
    "densenet": torchvision.models.densenet121,
    "vgg16": torchvision.models.vgg16,
    "squeezenet": torchvision.models.squeezenet1_0,
}


def on_meta(build):
    """Build without allocating or initialising weights: keys and shapes in milliseconds, even for VGG."""
    with torch.device("meta"):
        return build()


def shapes(network: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in network.state_dict().items()}


def version_shapes(model_name: str, fault: int = 0) -> dict[str, tuple[int, ...]]:
    return shapes(on_meta(lambda: ModelManager.build_version(model_name, NUM_CLASSES, fault).model_structure))


def torchvision_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    builder = TORCHVISION_BUILDERS[model_name]
    return shapes(on_meta(lambda: builder(weights=None, num_classes=NUM_CLASSES)))


# ---------------------------------------------------------------------------------------------
# healthy architectures
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", list(TORCHVISION_BUILDERS))
def test_healthy_state_dict_is_torchvisions(model_name):
    ours = version_shapes(model_name)
    assert list(ours) == list(torchvision_shapes(model_name))
    assert ours == torchvision_shapes(model_name)


@pytest.mark.parametrize("model_name, classifier_key", [
    ("resnet", "fc.weight"), ("alexnet", "classifier.6.weight"), ("densenet", "classifier.weight"),
    ("vgg16", "classifier.6.weight"), ("squeezenet", "classifier.1.weight")])
def test_healthy_output_layer_has_num_classes(model_name, classifier_key):
    assert version_shapes(model_name)[classifier_key][0] == NUM_CLASSES


def test_healthy_densenet_computes_what_torchvision_computes():
    """Same weights, same output: the module ReLU (needed by fault 3) is torchvision's functional one."""
    torch.manual_seed(0)
    ours = mymodel.DenseNetModel(NUM_CLASSES).model_structure.eval()
    reference = torchvision.models.densenet121(weights=None, num_classes=NUM_CLASSES).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)
    assert isinstance(ours, DenseNet121) and isinstance(ours.final_relu, nn.ReLU)


# ---------------------------------------------------------------------------------------------
# fault 1: the paper's reduced variants
# ---------------------------------------------------------------------------------------------

def test_resnet_reduced_keeps_one_bottleneck_per_stage():
    reduced = version_shapes("resnet", 1)
    healthy = version_shapes("resnet")
    for stage in range(1, 5):
        assert f"layer{stage}.0.conv1.weight" in reduced
        assert f"layer{stage}.0.downsample.0.weight" in reduced
        assert not any(key.startswith(f"layer{stage}.1.") for key in reduced)
        assert f"layer{stage}.1.conv1.weight" in healthy
    assert reduced["fc.weight"] == (NUM_CLASSES, 2048)
    # what is kept has the healthy shapes
    assert all(healthy[key] == shape for key, shape in reduced.items())
    network = on_meta(lambda: ModelManager.build_version("resnet", NUM_CLASSES, 1).model_structure)
    assert sum(isinstance(m, torchvision.models.resnet.Bottleneck) for m in network.modules()) == 4


def test_alexnet_reduced_drops_the_last_convolution_and_a_hidden_layer():
    reduced = version_shapes("alexnet", 1)
    conv_keys = sorted(k for k in reduced if k.startswith("features.") and k.endswith(".weight"))
    assert conv_keys == ["features.0.weight", "features.3.weight", "features.6.weight", "features.8.weight"]
    assert reduced["features.8.weight"] == (256, 384, 3, 3)
    classifier = {k: v for k, v in reduced.items() if k.startswith("classifier.")}
    assert classifier == {"classifier.0.weight": (4096, 9216), "classifier.0.bias": (4096,),
                          "classifier.2.weight": (NUM_CLASSES, 4096), "classifier.2.bias": (NUM_CLASSES,)}


def test_alexnet_reduced_runs_at_its_minimum_size():
    torch.manual_seed(0)
    model = ModelManager.build_version("alexnet", NUM_CLASSES, 1)
    assert model.min_input_size == 63
    features = model.model_structure.features
    assert [type(m) for m in features] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d,
                                           nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    with torch.no_grad():
        out = model.model_structure.eval()(torch.rand(2, 3, 63, 63))
    assert out.shape == (2, NUM_CLASSES)


def test_vgg16_reduced_has_ten_convolutions():
    reduced = version_shapes("vgg16", 1)
    conv = {k: v for k, v in reduced.items() if k.startswith("features.") and k.endswith(".weight")}
    assert sorted(int(k.split(".")[1]) for k in conv) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]
    assert [conv[f"features.{i}.weight"][0] for i in (0, 2, 5, 7, 10, 12, 15, 17, 20, 22)] == \
        [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]
    classifier = {k: v for k, v in reduced.items() if k.startswith("classifier.")}
    assert classifier == {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                          "classifier.3.weight": (NUM_CLASSES, 4096), "classifier.3.bias": (NUM_CLASSES,)}
    network = on_meta(lambda: ModelManager.build_version("vgg16", NUM_CLASSES, 1).model_structure)
    assert [type(m) for m in network.classifier] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert sum(isinstance(m, nn.MaxPool2d) for m in network.features) == 5


def fire_channels(network: nn.Module) -> list[tuple[int, int]]:
    return [(m.squeeze.in_channels, m.expand1x1.out_channels + m.expand3x3.out_channels)
            for m in network.modules() if isinstance(m, Fire)]


def test_squeezenet_reduced_lacks_two_fire_modules():
    torch.manual_seed(0)
    healthy = ModelManager.build_version("squeezenet", NUM_CLASSES).model_structure
    reduced = ModelManager.build_version("squeezenet", NUM_CLASSES, 1).model_structure
    assert fire_channels(healthy) == [(96, 128), (128, 128), (128, 256), (256, 256), (256, 384), (384, 384),
                                      (384, 512), (512, 512)]
    assert fire_channels(reduced) == [(96, 128), (128, 256), (256, 256), (256, 384), (384, 512), (512, 512)]
    assert shapes(reduced)["classifier.1.weight"] == (NUM_CLASSES, 512, 1, 1)
    with torch.no_grad():
        assert reduced.eval()(torch.rand(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


def test_densenet_reduced_is_the_stem_wrapper_around_densenet121():
    reduced = version_shapes("densenet", 1)
    assert reduced["conv1.weight"] == (64, 3, 3, 3)
    assert reduced["conv2.weight"] == (128, 64, 3, 3)
    assert reduced["conv3.weight"] == (3, 128, 3, 3)
    stock = torchvision_shapes("densenet")
    wrapped_features = {k[len("densenet."):]: v for k, v in reduced.items() if k.startswith("densenet.features.")}
    assert wrapped_features == {k: v for k, v in stock.items() if k.startswith("features.")}
    assert reduced["densenet.classifier.weight"] == (NUM_CLASSES, 1024)
    stem = {k for k in reduced if not k.startswith("densenet.")}
    assert stem == {f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    assert {k[len("densenet."):] for k in reduced if k.startswith("densenet.")} == set(stock)


def test_densenet_reduced_has_no_activation_in_the_stem_nor_after_the_features():
    torch.manual_seed(0)
    network = ModelManager.build_version("densenet", NUM_CLASSES, 1).model_structure.eval()
    assert isinstance(network, DenseNetWithStem)
    calls = []
    network.densenet.final_relu.register_forward_hook(lambda *args: calls.append("final_relu"))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = network(x)
        stem = network.conv3(network.conv2(network.conv1(x)))
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(network.densenet.features(stem), 1), 1)
        expected = network.densenet.classifier(pooled)
    assert calls == []
    assert out.shape == (2, NUM_CLASSES)
    assert torch.allclose(out, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

def test_registry_holds_the_paper_architectures_in_the_paper_order():
    """Every registered architecture is a ``MyModel`` under its own name; the paper's five come first, in the
    paper's order (the grid's order decides the version sets and DeepFailGuard's ties)."""
    assert ModelManager.MODELS is mymodel.MODELS
    assert list(ModelManager.MODELS)[:5] == ["resnet", "alexnet", "densenet", "vgg16", "squeezenet"]
    for name, cls in ModelManager.MODELS.items():
        assert issubclass(cls, mymodel.MyModel)
        assert cls.name == name
        assert ModelManager.get_model_class(name) is cls
    assert ModelManager.get_model_class("ResNet") is mymodel.ResNetModel


@pytest.mark.parametrize("model_name", list(ModelManager.MODELS))
def test_mixed_precision_policy_names_real_submodules(model_name):
    """Each architecture's ``float32_under_amp`` names submodules of the healthy network and, where it has
    one, of its fault-1 variant (the trainer refuses unknown names); SqueezeNet keeps its head in float32."""
    cls = ModelManager.get_model_class(model_name)
    assert isinstance(cls.amp_by_default, bool)
    for structure_fault in (0, 1):
        if FaultInjector.unsupported_reason(structure_fault, cls):
            continue
        with torch.device("meta"):
            network = ModelManager.build_version(model_name, NUM_CLASSES, structure_fault).model_structure
        for name in cls.float32_under_amp:
            assert isinstance(network.get_submodule(name), torch.nn.Module)
    assert mymodel.SqueezeNetModel.float32_under_amp == ("classifier",)


def test_unknown_architecture_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown model 'lenet'.*resnet"):
        ModelManager.get_model_class("lenet")
    with pytest.raises(UsageError, match="unknown model"):
        ModelManager.build_version("lenet", NUM_CLASSES)


def test_one_line_adds_a_torchvision_architecture(restore_registries):
    name = unused_name(mymodel.MODELS, "mobilenet")
    mymodel.register_model(mymodel.torchvision_architecture(name, torchvision.models.mobilenet_v3_small))
    assert ModelManager.get_model_class(name.capitalize()).name == name
    torch.manual_seed(0)
    model = ModelManager.build_version(name, NUM_CLASSES)
    assert isinstance(model, mymodel.MyModel) and model.model_name == name
    assert isinstance(model.model_structure, torchvision.models.MobileNetV3)
    reference = on_meta(lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=NUM_CLASSES))
    assert shapes(model.model_structure) == shapes(reference)
    with torch.no_grad():
        assert model.model_structure.eval()(torch.rand(2, 3, 32, 32)).shape == (2, NUM_CLASSES)
    with pytest.raises(UsageError, match=f"{name} cannot carry fault 1 .*no reduced variant"):
        ModelManager.build_version(name, NUM_CLASSES, 1)


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bug_id", [0, 1])
def test_checkpoint_is_a_plain_state_dict_that_loads_back(tmp_path, tiny_digits, bug_id):
    trained = ModelManager.create_model("squeezenet", tiny_digits, "train", bug_id, device="cpu",
                                        settings=TrainSettings(epochs=1), roots=Roots(model=tmp_path), progress=False)
    suffix = f"_bug{bug_id}" if bug_id else ""
    checkpoint = tmp_path / f"squeezenet_DIGITS{suffix}.pth"
    assert checkpoint.is_file() and (tmp_path / f"squeezenet_DIGITS{suffix}.json").is_file()

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    expected = trained.model_structure.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k].cpu()) for k in expected)
    structure = ModelManager.build_version("squeezenet", tiny_digits.num_classes, bug_id).model_structure
    structure.load_state_dict(state, strict=True)

    loaded = ModelManager.create_model("squeezenet", tiny_digits, "load", bug_id, device="cpu",
                                       roots=Roots(model=tmp_path))
    assert all(torch.equal(v, expected[k].cpu()) for k, v in loaded.model_structure.state_dict().items())
    assert loaded.val_acc == trained.val_acc and 0.0 <= loaded.val_acc <= 1.0
    assert loaded.test_acc == trained.test_acc and 0.0 <= loaded.test_acc <= 1.0
    assert loaded.metadata["structure_fault"] == bug_id
