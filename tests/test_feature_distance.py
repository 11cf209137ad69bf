"""The ``feature`` distance mode (``distances/feature.py``) against its closed form, and fDBD's parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from distances.feature import FeatureDistance, fdbd, penultimate_head
from storage.layout import mode_tag
from storage.settings import distance_mode
from utils import UsageError


def linear_headed(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 6)).double()


def conv_headed(seed: int = 0) -> nn.Module:
    """SqueezeNet's kind of head: a 1×1 convolution, ReLU and average pooling after the features."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten()).double()


def inputs(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_mode_is_named_and_built_like_the_others():
    settings = distance_mode("feature:3")
    assert (settings.name, settings.candidates, settings.mode) == ("feature", 3, "feature:3")
    assert distance_mode("feature").mode == "feature" and mode_tag("feature:3") == "feature3"
    attacker = settings.attacker(linear_headed(), "cpu", check_success=False)
    assert isinstance(attacker, FeatureDistance) and attacker.candidates == 3 and not attacker.check_success


@pytest.mark.parametrize("candidates", [2, 4, 6])
def test_a_linear_head_gives_the_closed_form(candidates):
    network = linear_headed()
    x = inputs()
    result = FeatureDistance(network, "cpu", candidates=candidates).attack(x)
    body, head = network[:3], network[3]
    assert penultimate_head(network) is head
    with torch.no_grad():
        z = body(x)
        logits = head(z).numpy()
    weight = head.weight.detach().numpy()
    for i in range(len(x)):
        order = np.argsort(-logits[i], kind="stable")
        c = order[0]
        gap = {k: (logits[i, c] - logits[i, k]) / np.linalg.norm(weight[c] - weight[k]) for k in range(6) if k != c}
        assert result.labels[i] == c
        assert result.distances[i] == pytest.approx(min(gap[k] for k in order[1:candidates]), rel=1e-9)
        assert result.outputs["feature_margins"][i] == pytest.approx(np.mean(list(gap.values())), rel=1e-9)
    assert result.success.all()  # the step to the nearest boundary, with the overshoot, crosses it
    assert "feature_deviations" not in result.outputs  # no training mean given
    np.testing.assert_array_equal(result.outputs["features"], z.numpy())  # the head's input, one row per input


def test_the_first_order_step_through_a_linear_head_is_the_closed_form():
    network, x = linear_headed(3), inputs(seed=4)
    exact = FeatureDistance(network, "cpu").attack(x)
    stepped = FeatureDistance(network, "cpu")
    stepped._linear = False  # force the general path
    general = stepped.attack(x)
    np.testing.assert_allclose(general.distances, exact.distances, rtol=1e-9)
    np.testing.assert_allclose(general.outputs["feature_margins"], exact.outputs["feature_margins"], rtol=1e-9)


def test_a_non_linear_head_is_one_first_order_step_at_its_input():
    network, x = conv_headed(), inputs(8, seed=2)
    attacker = FeatureDistance(network, "cpu", candidates=4)
    result = attacker.attack(x)
    assert attacker.linear_head is False and isinstance(attacker.head, nn.Conv2d)
    body, head = network[:2], network[2:]
    for i in range(len(x)):
        z = body(x[i:i + 1]).detach()
        jacobian = torch.autograd.functional.jacobian(lambda f: head(f)[0], z)[:, 0].flatten(1).numpy()
        logits = head(z)[0].detach().numpy()
        order = np.argsort(-logits, kind="stable")
        c = order[0]
        gap = {k: abs(logits[c] - logits[k]) / np.linalg.norm(jacobian[k] - jacobian[c]) for k in range(6) if k != c}
        assert result.distances[i] == pytest.approx(min(gap[k] for k in order[1:4]), rel=1e-6)
        assert result.outputs["feature_margins"][i] == pytest.approx(np.mean(list(gap.values())), rel=1e-6)
        # the features of a map: its channels' means over the positions
        np.testing.assert_allclose(result.outputs["features"][i], z[0].mean(dim=(1, 2)).numpy(), rtol=1e-12)
    assert result.outputs["features"].shape == (len(x), 8)


def test_deviations_are_the_features_distance_to_their_training_mean():
    network = linear_headed(5)
    training, x = inputs(30, seed=6), inputs(5, seed=7)
    attacker = FeatureDistance(network, "cpu")
    mean = attacker.fit_feature_mean([(training[:16], None), (training[16:], None)])
    with torch.no_grad():
        expected_mean = network[:3](training).mean(dim=0)
        expected = (network[:3](x) - expected_mean).norm(dim=1).numpy()
    torch.testing.assert_close(mean, expected_mean)
    result = attacker.attack(x)
    np.testing.assert_allclose(result.outputs["feature_deviations"], expected, rtol=1e-9)
    np.testing.assert_allclose(fdbd(result.outputs["feature_margins"], result.outputs["feature_deviations"]),
                               result.outputs["feature_margins"] / expected)


def test_the_feature_mode_costs_about_a_forward_pass():
    """FLOPs, not time: the closed form adds a few small matrix products to the forward pass, DeepFool many passes."""
    from distances.costs import measure

    recorded = measure(linear_headed(), inputs(8), "cpu", modes=("feature", "deepfool"))
    forward, flops = recorded["forward_flops"], recorded["distance_flops"]
    assert forward <= flops["feature"] < 1.5 * forward < flops["deepfool"]


def test_the_features_are_cached_and_read_back_with_the_modes_other_outputs(tmp_path):
    from storage import caches, layout

    network, x = linear_headed(2), inputs(6, seed=3)
    attacker = FeatureDistance(network, "cpu")
    attacker.fit_feature_mean([(inputs(10, seed=4), None)])  # as the fit and cache steps do
    result = attacker.attack(x)
    caches.write_version_cache(tmp_path, "resnet", "DIGITS", 0, result, "feature")
    truth = result.labels.copy()
    caches.write_validation_outputs(tmp_path, "resnet", "DIGITS", 0, result, truth, "feature")
    assert layout.cache_path(tmp_path, "resnet", "DIGITS", 0, "features", "feature").name == \
        "DIGITS_resnet_bug0_features_feature.npy"
    for read in (caches.read_version_cache(tmp_path, "resnet", "DIGITS", 0, 6, "feature"),
                 caches.read_validation_outputs(tmp_path, "resnet", "DIGITS", 0, 6, "feature")):
        assert set(read.outputs) == {"feature_margins", "feature_deviations", "features"}
        np.testing.assert_array_equal(read.outputs["features"], result.outputs["features"])
        assert read.outputs["features"].shape == (6, 16) and read.outputs["features"].dtype == np.float64
    path = layout.cache_path(tmp_path, "resnet", "DIGITS", 0, "features", "feature")
    path.unlink()
    np.save(path, np.zeros((6, 2, 2)))  # one matrix per input: no cache of this mode writes that
    with pytest.raises(UsageError, match="one number or one vector per input"):
        caches.read_version_cache(tmp_path, "resnet", "DIGITS", 0, 6, "feature")
