"""Batched L2 DeepFool (Attacker.py): closed form on linear classifiers, agreement with foolbox 3,
degenerate networks, loaders and batching, resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from Attacker import NORM_EPSILON, STEP_STABILISER, Attacker, AttackResult
from mydataset.base import resize_batch
from utils import UsageError

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# small networks
# ---------------------------------------------------------------------------------------------

def linear_model(num_classes: int = 10, side: int = 8, seed: int = 0) -> nn.Sequential:
    """Flatten + Linear with small random weights: DeepFool's first step lands exactly on the boundary."""
    torch.manual_seed(seed)
    layer = nn.Linear(3 * side * side, num_classes)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.05)
        layer.bias.normal_(0.0, 0.05)
    return nn.Sequential(nn.Flatten(), layer).eval()


def small_cnn(num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    """conv/relu/maxpool twice, then a linear layer; for 3×16×16 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, num_classes),
    ).eval()


def images(n: int = 16, side: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


class ConstantOutput(nn.Module):
    """Logits are a learned bias that does not depend on the input at all (no graph to the input)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.1, 0.5, -0.2]))

    def forward(self, x):
        return torch.zeros(len(x), 3) + self.bias


class ParameterFreeZeros(nn.Module):
    """All-zero logits without any parameter: the output does not even require a gradient, and
    every class ties (as a dead final ReLU gives, e.g. in an untrained SqueezeNet)."""

    def forward(self, x):
        return torch.zeros(len(x), 4)


class ZeroGradient(nn.Module):
    """Logits connected to the input, but with an identically zero input gradient."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.1, 0.7, 0.2]))

    def forward(self, x):
        return x.flatten(1).sum(dim=1, keepdim=True) * 0.0 + self.bias


class NonFiniteOutput(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.layer = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        logits = self.layer(x.flatten(1))
        return torch.cat([logits[:, :1] * self.value, logits[:, 1:]], dim=1)


def nearest_boundary_distance(model: nn.Sequential, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact L2 distance of each input to the nearest class boundary of a linear classifier (float64),
    the clean labels, and the largest single-pixel change of the minimal perturbation."""
    layer = model[1]
    weight, bias = layer.weight.detach().double(), layer.bias.detach().double()
    logits = x.flatten(1).double() @ weight.T + bias
    labels = logits.argmax(dim=1)
    distances, max_pixel = [], []
    for i, label in enumerate(labels):
        others = torch.arange(weight.shape[0]) != label
        w_diff = (weight - weight[label])[others]
        boundary = (logits[i, label] - logits[i])[others].abs() / w_diff.norm(dim=1)
        nearest = boundary.argmin()
        distances.append(boundary[nearest].item())
        max_pixel.append((boundary[nearest] * w_diff[nearest].abs().max() / w_diff[nearest].norm()).item())
    return np.array(distances), labels.numpy(), np.array(max_pixel)


# ---------------------------------------------------------------------------------------------
# (a) linear classifiers: DeepFool is exact
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overshoot", [0.02, 0.1, 0.0])
def test_linear_classifier_distance_is_the_closed_form(overshoot):
    model = linear_model()
    x = 0.5 + 0.05 * torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    exact, labels, max_pixel = nearest_boundary_distance(model, x)
    # the minimal perturbation stays well inside [0, 1], so clipping plays no part
    assert (x.min() - (1 + overshoot) * max_pixel.max()) > 0.05
    assert (x.max() + (1 + overshoot) * max_pixel.max()) < 0.95

    result = Attacker(model, device="cpu", overshoot=overshoot).attack(x)

    expected = (1.0 + overshoot) * (exact + STEP_STABILISER)
    # atol: the attack works in float32, where a pixel near 0.5 is rounded to ~3e-8
    np.testing.assert_allclose(result.distances, expected, rtol=1e-5, atol=1e-7)
    assert np.median(np.abs(result.distances / expected - 1)) < 2e-6
    assert result.success.all()
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_array_equal(result.labels, model(x).argmax(dim=1).numpy())


@pytest.mark.parametrize("overshoot", [0.02, 0.0])
def test_float64_linear_classifier_is_attacked_in_float64(overshoot):
    """A ``.double()`` network is attacked in float64, so the closed form holds to 1e-10, far beyond
    float32's reach (the float32 test above needs rtol 1e-5, and the same network in float32 misses
    1e-10 by orders of magnitude, checked below)."""
    model = linear_model().double()
    x = 0.5 + 0.05 * torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact, labels, max_pixel = nearest_boundary_distance(model, x)
    assert (x.min() - (1 + overshoot) * max_pixel.max()) > 0.05  # no clipping
    assert (x.max() + (1 + overshoot) * max_pixel.max()) < 0.95

    attacker = Attacker(model, device="cpu", overshoot=overshoot)
    result = attacker.attack(x)

    assert attacker.dtype == torch.float64
    assert result.distances.dtype == np.float64 and result.probabilities.dtype == np.float64
    # DeepFool's one step, with foolbox's guard against zero gradients in both of its divisions by
    # the gradient norm g = ||w_k - w_0|| (≈ 1 here, so the guard alone moves the distance by ~2e-8)
    layer = model[1]
    logits = x.flatten(1) @ layer.weight.detach().T + layer.bias.detach()
    weight = layer.weight.detach()
    gaps = (logits.gather(1, torch.from_numpy(labels)[:, None]) - logits).abs()
    norms = (weight[None, :, :] - weight[torch.from_numpy(labels)][:, None, :]).norm(dim=2)
    boundary = (gaps / (norms + NORM_EPSILON)).scatter(1, torch.from_numpy(labels)[:, None], np.inf)
    nearest = boundary.argmin(dim=1, keepdim=True)
    g = norms.gather(1, nearest).squeeze(1).numpy()
    guarded = boundary.gather(1, nearest).squeeze(1).numpy()
    expected = (1.0 + overshoot) * (guarded + STEP_STABILISER) * g / (g + NORM_EPSILON)
    np.testing.assert_allclose(result.distances, expected, rtol=1e-10, atol=0)
    # the closed form for a linear classifier, (1 + overshoot)·(distance + 1e-4), to the guard's size
    np.testing.assert_allclose(result.distances, (1.0 + overshoot) * (exact + STEP_STABILISER), rtol=1e-7, atol=0)
    assert result.success.all()
    np.testing.assert_array_equal(result.labels, labels)

    # the float32 path on the same network cannot meet the float64 tolerance: the test discriminates
    single = Attacker(linear_model(), device="cpu", overshoot=overshoot).attack(x.float())
    assert single.distances.dtype == np.float32
    assert np.max(np.abs(single.distances / expected - 1)) > 1e-8


def test_linear_classifier_overshoot_scales_the_distance():
    model = linear_model(seed=5)
    x = 0.5 + 0.05 * torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    small = Attacker(model, device="cpu", overshoot=0.02).attack(x).distances
    large = Attacker(model, device="cpu", overshoot=0.3).attack(x).distances
    np.testing.assert_allclose(large / small, 1.3 / 1.02, rtol=1e-5)


def test_attack_result_fields_have_one_entry_per_input():
    model = linear_model(num_classes=4)
    x = 0.5 + 0.05 * torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    result = Attacker(model, device="cpu").attack(x)
    assert isinstance(result, AttackResult)
    assert result.distances.shape == result.labels.shape == result.success.shape == (6,)
    assert result.success.dtype == bool and np.issubdtype(result.labels.dtype, np.integer)
    assert result.probabilities.shape == (6, 4)
    np.testing.assert_allclose(result.probabilities, model(x).softmax(dim=1).detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("options", [dict(steps=0), dict(candidates=1), dict(overshoot=-0.1)])
def test_invalid_attack_options_are_usage_errors(options):
    with pytest.raises(UsageError):
        Attacker(linear_model(), device="cpu", **options)


# ---------------------------------------------------------------------------------------------
# (b) agreement with foolbox 3.3.4
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_classes, candidates", [(10, 10), (10, 3), (3, 10)])
def test_distances_agree_with_foolbox(num_classes, candidates):
    fb = pytest.importorskip("foolbox")
    model = small_cnn(num_classes)
    x = images(16)
    with torch.no_grad():
        clean = model(x).argmax(dim=1)

    ours = Attacker(model, device="cpu", steps=50, candidates=candidates, overshoot=0.02).attack(x)

    attack = fb.attacks.L2DeepFoolAttack(steps=50, candidates=candidates, overshoot=0.02)
    raw, _, fb_success = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, fb.criteria.Misclassification(clean),
                                epsilons=None)
    fb_distances = (raw - x).flatten(1).norm(dim=1).numpy()

    np.testing.assert_array_equal(ours.labels, clean.numpy())
    assert np.mean(ours.success == fb_success.numpy()) >= 0.99
    assert ours.success.mean() > 0.9  # a random CNN is easily fooled: the comparison is not vacuous
    relative = np.abs(ours.distances - fb_distances) / np.maximum(fb_distances, 1e-12)
    assert np.median(relative) <= 1e-4, relative
    assert (fb_distances > 0).all() and np.isfinite(ours.distances).all()


def test_more_candidates_than_classes_uses_every_class():
    model = small_cnn(num_classes=3, seed=2)
    x = images(8, seed=7)
    wide = Attacker(model, device="cpu", candidates=10).attack(x)
    exact = Attacker(model, device="cpu", candidates=3).attack(x)
    np.testing.assert_array_equal(wide.distances, exact.distances)
    np.testing.assert_array_equal(wide.success, exact.success)
    assert wide.success.all()


def test_binary_classifier_with_two_candidates():
    model = linear_model(num_classes=2, seed=9)
    x = 0.5 + 0.05 * torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    exact, labels, _ = nearest_boundary_distance(model, x)
    result = Attacker(model, device="cpu", candidates=2).attack(x)
    np.testing.assert_allclose(result.distances, 1.02 * (exact + STEP_STABILISER), rtol=1e-5)
    np.testing.assert_array_equal(result.labels, labels)


# ---------------------------------------------------------------------------------------------
# (c) degenerate networks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("network", [ConstantOutput, ParameterFreeZeros, ZeroGradient])
def test_networks_without_input_gradient_give_finite_unsuccessful_attacks(network):
    model = network()
    x = images(6, side=8)
    result = Attacker(model, device="cpu", steps=5).attack(x)
    assert np.isfinite(result.distances).all()
    np.testing.assert_array_equal(result.distances, 0.0)  # no gradient, no movement
    assert not result.success.any()
    with torch.no_grad():
        np.testing.assert_array_equal(result.labels, model(x).argmax(dim=1).numpy())  # ties: argmax's label
    assert np.isfinite(result.probabilities).all()


def test_inputs_stuck_at_a_dead_relu_do_not_disturb_the_others():
    """Half the batch has a zero gradient (the ReLU is off), half is linear: the linear half still
    gets its exact distance, the dead half stays put."""
    torch.manual_seed(0)
    model = linear_model(num_classes=5, seed=11)
    x_live = 0.5 + 0.05 * torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    exact, _, _ = nearest_boundary_distance(model, x_live)

    class Gate(nn.Module):
        """Linear logits where the first pixel is above 0.25, constant logits (zero gradient) elsewhere."""

        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            gate = (x[:, :1, :1, :1] > 0.25).flatten(1).float()
            return gate * self.inner(x) + (1 - gate) * torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])

    x_dead = torch.full((3, 3, 8, 8), 0.5)
    x_dead[:, 0, 0, 0] = 0.1
    x = torch.cat([x_live, x_dead])
    result = Attacker(Gate(), device="cpu").attack(x)
    np.testing.assert_allclose(result.distances[:4], 1.02 * (exact + STEP_STABILISER), rtol=1e-5)
    assert result.success[:4].all()
    np.testing.assert_array_equal(result.distances[4:], 0.0)
    assert not result.success[4:].any()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_network_with_non_finite_output_is_a_usage_error(value):
    with pytest.raises(UsageError, match="NaN or infinite"):
        Attacker(NonFiniteOutput(value), device="cpu").attack(images(4, side=8))


# ---------------------------------------------------------------------------------------------
# (d) loaders and batching
# ---------------------------------------------------------------------------------------------

def test_cal_all_distance_follows_loader_order_and_batching_does_not_matter():
    model = small_cnn(seed=4)
    x = images(12, seed=5)
    y = torch.arange(12) % 10
    attacker = Attacker(model, device="cpu")
    whole = attacker.attack(x)
    assert len(set(whole.distances.round(6))) == 12  # distinct distances, so order is checkable

    loader = [(x[i:i + 5], y[i:i + 5]) for i in range(0, 12, 5)]  # batches of 5, 5, 2
    distances, labels = attacker.cal_all_distance(loader)
    assert isinstance(distances, np.ndarray) and isinstance(labels, np.ndarray)
    assert distances.shape == labels.shape == (12,)
    np.testing.assert_allclose(distances, whole.distances, rtol=1e-5)
    np.testing.assert_array_equal(labels, whole.labels)

    # a reversed loader gives the reversed answers
    reversed_loader = [(x.flip(0)[i:i + 5], y.flip(0)[i:i + 5]) for i in range(0, 12, 5)]
    reversed_distances, reversed_labels = attacker.cal_all_distance(reversed_loader)
    np.testing.assert_allclose(reversed_distances, whole.distances[::-1], rtol=1e-5)
    np.testing.assert_array_equal(reversed_labels, whole.labels[::-1])


def test_inputs_attacked_alone_match_the_batch():
    """Inputs finish at different steps and leave the batch; the ones still running are unaffected."""
    model = small_cnn(seed=6)
    x = images(10, seed=8)
    attacker = Attacker(model, device="cpu")
    batch = attacker.attack(x)
    alone = AttackResult.concatenate([attacker.attack(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(alone.distances, batch.distances, rtol=1e-5)
    np.testing.assert_array_equal(alone.labels, batch.labels)
    np.testing.assert_array_equal(alone.success, batch.success)


def test_cal_distance_accepts_a_tensor_or_an_images_labels_pair():
    model = small_cnn(seed=4)
    x = images(6, seed=5)
    attacker = Attacker(model, device="cpu")
    d_tensor, l_tensor = attacker.cal_distance(x)
    d_pair, l_pair = attacker.cal_distance((x, torch.zeros(6, dtype=torch.long)))
    d_list, l_list = attacker.cal_distance([x, torch.zeros(6, dtype=torch.long)])
    assert isinstance(d_tensor, np.ndarray) and d_tensor.shape == (6,)
    np.testing.assert_array_equal(d_tensor, d_pair)
    np.testing.assert_array_equal(d_tensor, d_list)
    np.testing.assert_array_equal(l_tensor, l_pair)
    np.testing.assert_array_equal(l_tensor, l_list)


def test_empty_loader_gives_empty_arrays():
    distances, labels = Attacker(small_cnn(), device="cpu").cal_all_distance([])
    assert distances.shape == (0,) and labels.shape == (0,)


def test_inputs_are_not_modified():
    x = images(6, seed=5)
    before = x.clone()
    Attacker(small_cnn(seed=4), device="cpu").attack(x)
    assert torch.equal(x, before)


# ---------------------------------------------------------------------------------------------
# (e) resizing
# ---------------------------------------------------------------------------------------------

def test_image_size_resizes_inputs_before_attacking():
    model = linear_model(num_classes=5, side=16, seed=3)
    small = 0.5 + 0.05 * torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    resized = Attacker(model, device="cpu", image_size=16).attack(small)
    by_hand = Attacker(model, device="cpu").attack(resize_batch(small, 16))
    np.testing.assert_array_equal(resized.distances, by_hand.distances)
    np.testing.assert_array_equal(resized.labels, by_hand.labels)
    # distances live at 16×16: the closed form there holds
    exact, _, _ = nearest_boundary_distance(model, resize_batch(small, 16))
    np.testing.assert_allclose(resized.distances, 1.02 * (exact + STEP_STABILISER), rtol=1e-5)
    with pytest.raises(RuntimeError):  # without the size the 8×8 images do not fit the network
        Attacker(model, device="cpu").attack(small)


def test_image_size_equal_to_the_input_size_changes_nothing():
    model = small_cnn(seed=4)
    x = images(6, seed=5)
    np.testing.assert_array_equal(Attacker(model, device="cpu", image_size=16).attack(x).distances,
                                  Attacker(model, device="cpu").attack(x).distances)


def record_strategies(monkeypatch) -> list[tuple[str, int]]:
    """Every (strategy, batch size) that ``Attacker._gradients_by`` is called with, from now on."""
    calls = []
    original = Attacker._gradients_by

    def recording(self, strategy, x, classes):
        calls.append((strategy, len(x)))
        return original(self, strategy, x, classes)

    monkeypatch.setattr(Attacker, "_gradients_by", recording)
    return calls


@pytest.mark.parametrize("strategy", ["looped", "batched", "replicated"])
def test_every_gradient_strategy_gives_the_same_attack(strategy, monkeypatch):
    """The autotuner may pick any strategy: each must give the candidates' exact input gradients."""
    network = nn.Sequential(small_cnn(), nn.BatchNorm1d(10)).eval()  # a folded batch norm on the logits
    x = images(n=6)
    reference = Attacker(network, device="cpu")
    reference._strategy = "looped"
    attacker = Attacker(network, device="cpu")
    attacker._strategy = strategy
    classes = attacker.model(x).argsort(dim=1, descending=True)[:, :10]
    want = reference._gradients_by("looped", x, classes)
    got = attacker._gradients_by(strategy, x, classes)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the gradients really are those of l_k - l_0: check one against autograd on a single input
    one = x[:1].clone().requires_grad_(True)
    logits = attacker.model(one)[0]
    (logits[classes[0, 3]] - logits[classes[0, 0]]).backward()
    torch.testing.assert_close(got[1][0, 2], one.grad[0], rtol=1e-5, atol=1e-6)

    # through attack(): 6 inputs × 9 candidates would take the replicated strategy by size, whatever
    # _strategy says; with no batch small enough for it, the strategy set above is the one that runs
    monkeypatch.setattr("Attacker.REPLICATED_MAX_INPUTS", 0)
    calls = record_strategies(monkeypatch)
    result = attacker.attack(x)
    assert calls and {name for name, _ in calls} == {strategy}, calls
    del calls[:]
    expected = reference.attack(x)
    assert calls and {name for name, _ in calls} == {"looped"}, calls
    np.testing.assert_allclose(result.distances, expected.distances, rtol=1e-5)
    np.testing.assert_array_equal(result.success, expected.success)
    assert result.success.mean() > 0.5  # several steps of real attacks were compared, not just clean logits
    assert attacker._strategy == strategy


def test_replicated_strategy_is_never_tried_on_a_batch_too_large_for_it(monkeypatch):
    """Replicating a large batch once per candidate could exhaust memory: the autotuner never times it,
    and no step builds a replicated batch above ``REPLICATED_MAX_INPUTS``."""
    from Attacker import REPLICATED_MAX_INPUTS

    x = images(n=REPLICATED_MAX_INPUTS // 9 + 1)
    attacker = Attacker(small_cnn(), device="cpu")
    calls = record_strategies(monkeypatch)
    attacker.attack(x)
    assert attacker._strategy in ("looped", "batched")
    assert calls[0][1] == len(x) and calls[0][0] != "replicated"  # the first step: too large for it
    assert all(n * 9 <= REPLICATED_MAX_INPUTS for name, n in calls if name == "replicated"), calls


# ---------------------------------------------------------------------------------------------
# CUDA graphs (the CUDA-only step; off without CUDA, where the CPU path stays as it is)
# ---------------------------------------------------------------------------------------------

def test_cuda_graphs_are_never_used_without_cuda(monkeypatch):
    attacker = Attacker(small_cnn(), device="cpu", cuda_graphs=True)
    assert attacker.cuda_graphs is False
    calls = record_strategies(monkeypatch)
    result = attacker.attack(images(n=6))
    assert calls and attacker._graphs == {}
    np.testing.assert_array_equal(result.distances, Attacker(small_cnn(), device="cpu").attack(images(n=6)).distances)


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_checks.sh runs it)")


@cuda_only
@pytest.mark.parametrize("n", [1, 5, 40])
def test_cuda_graph_step_gives_the_eager_step_distances(n):
    """Replayed graphs (inputs padded to a power of two, buffers reused across batches) give the
    uncompiled path's distances to float32 rounding and the same success flags."""
    model = small_cnn(seed=3)
    graphed = Attacker(model, device="cuda", cuda_graphs=True)
    eager = Attacker(model, device="cuda", cuda_graphs=False)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    for seed in (1, 2):  # the second batch replays the graphs captured for the first
        x = images(n=n, seed=seed)
        got, want = graphed.attack(x), eager.attack(x)
        np.testing.assert_allclose(got.distances, want.distances, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(got.success, want.success)
        np.testing.assert_array_equal(got.labels, want.labels)
    assert graphed.cuda_graphs and graphed._graphs, "no graph was captured"
    assert all(key[0] & (key[0] - 1) == 0 for key in graphed._graphs)  # buckets are powers of two


# ---------------------------------------------------------------------------------------------
# (c) distance modes: deepfool:K and first-order
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, candidates, name", [
    ("deepfool", 10, "deepfool"), ("deepfool:2", 2, "deepfool"), ("DeepFool:7", 7, "deepfool"),
    ("first-order", 10, "first-order"), ("first-order:3", 3, "first-order")])
def test_distance_modes_parse_and_name_themselves(text, candidates, name):
    from storage.settings import DEEPFOOL, distance_mode

    settings = distance_mode(text)
    assert (settings.candidates, settings.name) == (candidates, name)
    assert (settings.steps, settings.overshoot) == (DEEPFOOL.steps, DEEPFOOL.overshoot)
    assert distance_mode(settings.mode) == settings and settings.mode == text.lower()
    assert distance_mode("deepfool") == DEEPFOOL


@pytest.mark.parametrize("text", ["deepfool:1", "deepfool:x", "first-order:", "fgsm", "deepfool:2:3", ""])
def test_unknown_distance_modes_are_usage_errors(text):
    from storage.settings import distance_mode

    with pytest.raises(UsageError, match="distance mode"):
        distance_mode(text)


@pytest.mark.parametrize("candidates", [10, 3])
def test_first_order_is_the_closed_form_on_a_float64_linear_model(candidates):
    """One linearisation is exact for a linear classifier: min over the top candidates k of
    |l_k − l_0| / ‖w_k − w_0‖ (with foolbox's guard on the norm), in float64 to 1e-12."""
    from storage.settings import distance_mode

    model = linear_model().double()
    x = 0.5 + 0.05 * torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    attacker = distance_mode(f"first-order:{candidates}").attacker(model, "cpu")
    result = attacker.attack(x)

    layer = model[1]
    weight = layer.weight.detach()
    logits = x.flatten(1) @ weight.T + layer.bias.detach()
    expected = []
    for row in logits:
        order = torch.argsort(row, descending=True, stable=True)[:candidates]
        clean = order[0]
        expected.append(min(float((row[clean] - row[k]).abs() / ((weight[k] - weight[clean]).norm() + NORM_EPSILON))
                            for k in order[1:]))
    np.testing.assert_allclose(result.distances, expected, rtol=1e-12, atol=0)
    assert result.distances.dtype == np.float64
    assert result.success.all()  # the step with overshoot crosses the (linear) boundary
    # on a linear model the full DeepFool takes the same single step, with overshoot and its stabiliser
    full = distance_mode(f"deepfool:{candidates}").attacker(model, "cpu").attack(x)
    np.testing.assert_allclose(full.distances, 1.02 * (result.distances + STEP_STABILISER), rtol=1e-6)


def test_first_order_on_a_cnn_is_an_estimate_that_ranks_like_deepfool():
    """On a non-linear network the first linearisation is an estimate: finite, non-negative, the same labels
    and softmax as the full attack, and it ranks inputs much as the full distance does."""
    from scipy.stats import spearmanr

    from storage.settings import distance_mode

    model = small_cnn(10)
    x = images(32)
    first = distance_mode("first-order").attacker(model, "cpu").attack(x)
    full = distance_mode("deepfool").attacker(model, "cpu").attack(x)
    np.testing.assert_array_equal(first.labels, full.labels)
    np.testing.assert_allclose(first.probabilities, full.probabilities)
    assert np.isfinite(first.distances).all() and (first.distances >= 0).all()
    assert spearmanr(first.distances, full.distances).statistic > 0.8


@pytest.mark.parametrize("mode", ["deepfool:2", "deepfool:4"])
def test_deepfool_k_mode_is_foolbox_with_k_candidates(mode):
    fb = pytest.importorskip("foolbox")
    from storage.settings import distance_mode

    model, x = small_cnn(10), images(16)
    settings = distance_mode(mode)
    ours = settings.attacker(model, "cpu").attack(x)
    attack = fb.attacks.L2DeepFoolAttack(steps=50, candidates=settings.candidates, overshoot=0.02)
    clean = model(x).argmax(dim=1)
    raw, _, fb_success = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, fb.criteria.Misclassification(clean),
                                epsilons=None)
    fb_distances = (raw - x).flatten(1).norm(dim=1).numpy()
    assert np.mean(ours.success == fb_success.numpy()) >= 0.99 and ours.success.mean() > 0.9
    relative = np.abs(ours.distances - fb_distances) / np.maximum(fb_distances, 1e-12)
    assert np.median(relative) <= 1e-4, relative
