"""Architectures: output shapes for any channels/size, Glorot init, distinct ReLU modules."""

import math

import pytest
import torch
from torch import nn

from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.models import ARCHITECTURES, build_model


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32), (1, 12), (3, 28)])
def test_output_shape(name, channels, size):
    model = build_model(name, channels, size, num_classes=7)
    out = model(torch.rand(5, channels, size, size))
    assert out.shape == (5, 7)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_glorot_uniform_init(name):
    torch.manual_seed(0)
    model = build_model(name, 3, 32, 10)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers
    for layer in layers:
        fan_out, fan_in = layer.weight.shape[0], layer.weight.shape[1]
        receptive = layer.weight[0, 0].numel()
        bound = math.sqrt(6.0 / ((fan_in + fan_out) * receptive))
        w = layer.weight.detach()
        assert w.abs().max() <= bound + 1e-6
        # uniform on [-b, b] has std b / sqrt(3); a large layer should be close to it
        if w.numel() > 2000:
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_relu_is_its_own_non_inplace_module(name):
    model = build_model(name, 3, 32, 10)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) >= 2
    assert not any(m.inplace for m in relus)


def test_paper_layer_counts():
    """MiniCNN and MiniResNet have 11 weight layers on the main path; cnn2 has 2 convs."""

    def main_path_layers(model):
        return [
            n
            for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and "shortcut" not in n
        ]

    assert len(main_path_layers(build_model("minicnn", 3, 32, 10))) == 11
    assert len(main_path_layers(build_model("miniresnet", 3, 32, 10))) == 11
    cnn2 = build_model("cnn2", 3, 32, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in cnn2.modules()) == 2


def test_miniresnet_differs_from_minicnn_only_by_skips():
    cnn, res = build_model("minicnn", 3, 32, 10), build_model("miniresnet", 3, 32, 10)
    assert any("shortcut" in n for n, _ in res.named_modules() if isinstance(_, nn.Conv2d))
    assert not any("shortcut" in n for n, _ in cnn.named_modules() if isinstance(_, nn.Conv2d))


def test_unknown_architecture_and_too_small_images():
    with pytest.raises(ConfigError, match="architecture 'resnet152' is unknown"):
        build_model("resnet152", 3, 32, 10)
    with pytest.raises(ConfigError, match="at least 4x4"):
        build_model("cnn2", 1, 2, 10)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_model("cnn2", 1, 8, 1)


def test_minicnn_bn_is_minicnn_plus_batch_norm():
    """Same conv and linear layers (so the same Glorot draws), plus one BatchNorm per conv; the
    paper architectures have no normalisation at all."""
    torch.manual_seed(0)
    plain = build_model("minicnn", 3, 32, 10)
    torch.manual_seed(0)
    normed = build_model("minicnn_bn", 3, 32, 10)
    norms = [m for m in normed.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    convs = [m for m in normed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(norms) == len(convs) == 9
    for name in ("minicnn", "miniresnet", "cnn2"):
        assert not any(
            isinstance(m, torch.nn.BatchNorm2d) for m in build_model(name, 3, 32, 10).modules()
        )
    plain_state = plain.state_dict()
    for key, value in normed.state_dict().items():
        if key in plain_state:
            assert torch.equal(value, plain_state[key]), key
    assert set(plain_state) < set(normed.state_dict())
