"""Saliency engines: known answers on simple models, completeness, batching, Captum agreement."""

import pytest
import torch
from torch import nn

from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import (
    Gradient,
    IntegratedGradients,
    SmoothGrad,
    build_method,
    path_points,
)


def linear_model(channels=2, size=4, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes)).double()


def smooth_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 36, 3)
    ).double()


def test_gradient_of_linear_model_is_its_weight_row():
    model = linear_model()
    x = torch.rand(6, 2, 4, 4, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    maps = Gradient(model).attribute(x, targets)
    weight = model[1].weight.detach()
    for i, t in enumerate(targets):
        assert torch.equal(maps[i].flatten(), weight[t])


def test_predicted_target_is_the_argmax():
    model = linear_model()
    x = torch.rand(6, 2, 4, 4, dtype=torch.float64)
    predicted = model(x).argmax(1)
    assert torch.equal(Gradient(model).attribute(x), Gradient(model).attribute(x, predicted))


@pytest.mark.parametrize("rule", ["riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_completeness(rule):
    """Attributions sum to f(x) - f(baseline) up to the integration error (1e-3 relative)."""
    model = smooth_model()
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0])
    maps = IntegratedGradients(model, n_steps=400, rule=rule).attribute(x, targets)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, targets[:, None]).squeeze(1)
    total = maps.flatten(1).sum(1)
    assert torch.allclose(total, delta, rtol=1e-3, atol=1e-6)


def test_integrated_gradients_of_linear_model_is_gradient_times_input():
    model = linear_model()
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    targets = torch.tensor([2, 0, 1])
    ig = IntegratedGradients(model, n_steps=25).attribute(x, targets)
    grad = Gradient(model).attribute(x, targets)
    assert torch.allclose(ig, grad * x, atol=1e-12)


def test_pair_rule_is_linspace_with_equal_weights():
    alphas, weights = path_points(25, "pair")
    assert torch.allclose(alphas, torch.linspace(0, 1, 25))
    assert torch.allclose(weights, torch.full((25,), 1 / 25))
    for rule in ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"):
        assert path_points(10, rule)[1].sum().item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="rule 'simpson' is unknown"):
        path_points(10, "simpson")


def test_smoothgrad_without_noise_is_squared_gradient():
    model = smooth_model()
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 1])
    grad = Gradient(model).attribute(x, targets)
    sg = SmoothGrad(model, n_samples=7, noise_level=0.0).attribute(x, targets, range(5))
    assert torch.allclose(sg, grad * grad, atol=1e-12)
    plain = SmoothGrad(model, n_samples=7, noise_level=0.0, magnitude=False).attribute(x, targets)
    assert torch.allclose(plain, grad, atol=1e-12)


def test_smoothgrad_noise_scales_with_image_range():
    model = smooth_model()
    engine = SmoothGrad(model, n_samples=500, noise_level=0.15)
    noise = engine.noise(torch.zeros(1, 1, 6, 6), [3])
    assert noise.shape == (1, 500, 1, 6, 6)
    assert noise.std().item() == pytest.approx(1.0, rel=0.05)  # unit noise, scaled per image


@pytest.mark.parametrize(
    "method,params",
    [
        ("grad", {}),
        ("smoothgrad", {"n_samples": 5, "noise_level": 0.2, "seed": 3}),
        ("integrated_gradients", {"n_steps": 6}),
    ],
)
def test_batching_does_not_change_results(method, params):
    """Pass size and how images are grouped into calls leave every map unchanged."""
    torch.manual_seed(0)
    model = build_model("cnn2", 1, 8, 10).double().eval()
    x = torch.rand(10, 1, 8, 8, dtype=torch.float64)
    targets = torch.arange(10) % 10
    ids = list(range(100, 110))
    whole = build_method(method, model, params, pass_size=64).attribute(x, targets, ids)
    small = build_method(method, model, params, pass_size=3)
    parts = torch.cat(
        [small.attribute(x[:4], targets[:4], ids[:4]), small.attribute(x[4:], targets[4:], ids[4:])]
    )
    assert torch.allclose(whole, parts, rtol=1e-10, atol=1e-12)


def test_smoothgrad_noise_is_keyed_by_sample_id():
    model = smooth_model()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    engine = SmoothGrad(model, n_samples=4, seed=1)
    a = engine.attribute(x, torch.tensor([0, 1]), [7, 8])
    b = engine.attribute(x.flip(0), torch.tensor([1, 0]), [8, 7]).flip(0)
    assert torch.allclose(a, b, atol=1e-12)
    c = engine.attribute(x, torch.tensor([0, 1]), [9, 10])
    assert not torch.allclose(a, c)


def test_engines_match_captum():
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = build_model("cnn2", 3, 8, 10).double().eval()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    ours = Gradient(model).attribute(x, targets)
    theirs = captum.Saliency(model).attribute(x, target=targets, abs=False)
    assert torch.allclose(ours, theirs, atol=1e-12)
    ours = IntegratedGradients(model, n_steps=25, rule="riemann_trapezoid").attribute(x, targets)
    theirs = captum.IntegratedGradients(model).attribute(
        x, baselines=0.0, target=targets, n_steps=25, method="riemann_trapezoid"
    )
    # Captum's trapezoid weights are 1/n with halved end points: they sum to (n-1)/n, not 1,
    # so its attributions are ours scaled by 24/25 (ours satisfy completeness; see above).
    assert torch.allclose(ours * 24 / 25, theirs, atol=1e-10)


def test_invalid_parameters_name_the_key():
    """Bounds of single keys are the schema's (tests/test_configuration.py); the engines stop
    on options they have no branch for and on unknown names and keys."""
    model = smooth_model()
    with pytest.raises(ConfigError, match="methods.integrated_gradients.baseline"):
        IntegratedGradients(model, baseline="blur")
    with pytest.raises(ConfigError, match="saliency method 'lime' is unknown"):
        build_method("lime", model, {}, 64)
    with pytest.raises(ConfigError, match="methods.grad"):
        build_method("grad", model, {"n_samples": 3}, 64)
