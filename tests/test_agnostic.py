"""Input-agnostic class maps (Akhtar & Jalwana 2023): the map moves samples to its class, stays in
the eta ball, is reproducible per (seed, label, draw), and bad settings are refused."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saliency_fingerprints.agnostic import (
    AgnosticSettings,
    activation_layer,
    activation_weights,
    class_maps,
    input_agnostic_map,
    map_diagnostics,
    project_l2,
    scaled_eta,
)
from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.models import build_model

# a tiny search: small batches, few iterations, the eta given directly (no scaling)
TINY = dict(batch_size=16, iterations=20, refine_iterations=10, eta_reference=None)
SQUARES = [(1, 1), (1, 5), (5, 3)]  # class c: a bright 2x2 square at SQUARES[c]


def square_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """1x8x8 images of 3 classes: dim noise plus a bright square whose position is the class."""
    images = torch.rand(n, 1, 8, 8, generator=generator) * 0.3
    labels = torch.randint(3, (n,), generator=generator)
    for i, label in enumerate(labels.tolist()):
        row, col = SQUARES[label]
        images[i, 0, row : row + 2, col : col + 2] = 1.0
    return images, labels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on 2 shared cores: one torch thread is much faster than two contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """cnn2 trained for 60 steps on the squares (about 0.3 s; it classifies them all)."""
    generator = torch.Generator().manual_seed(0)
    images, labels = square_images(300, generator)
    torch.manual_seed(0)
    model = build_model("cnn2", 1, 8, 3)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        index = torch.randint(len(images), (32,), generator=generator)
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.95
    return model, images, labels


@pytest.fixture(scope="module")
def untrained() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = build_model("cnn2", 3, 16, 4)
    images = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, images


def test_map_moves_other_classes_to_its_label(trained):
    """Images of classes 1 and 2, minus the class-0 map, are classified as class 0."""
    model, images, labels = trained
    others = images[labels != 0]
    settings = AgnosticSettings(**TINY, eta=3.0, refine_lr=0.01)
    nu = input_agnostic_map(model, others, 0, settings, generator=torch.Generator().manual_seed(1))
    assert nu.shape == (1, 8, 8)
    d = map_diagnostics(model, others, 0, nu, settings)
    assert d.clean == 0.0 and d.clean_probability < 1e-3
    assert d.success > 0.7 and d.probability > 0.5
    # the map draws class 0's square (subtracting a negative value brightens the pixels)
    row, col = SQUARES[0]
    assert nu[0, row : row + 2, col : col + 2].mean() < nu.mean()


@pytest.mark.parametrize("label", [0, 3])
def test_map_raises_label_probability_of_untrained_model(untrained, label):
    model, images = untrained
    settings = AgnosticSettings(**TINY, eta=4.0)
    nu = input_agnostic_map(
        model, images, label, settings, generator=torch.Generator().manual_seed(2)
    )
    d = map_diagnostics(model, images, label, nu, settings)
    assert d.probability > d.clean_probability + 0.02
    assert d.success >= d.clean


def test_projection_onto_the_l2_ball():
    big = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 5
    projected = project_l2(big, 2.5)
    assert torch.linalg.vector_norm(projected) == pytest.approx(2.5, rel=1e-6)
    assert torch.allclose(projected / 2.5, big / torch.linalg.vector_norm(big))  # same direction
    small = big / torch.linalg.vector_norm(big)  # norm 1 < 2.5: unchanged
    assert project_l2(small, 2.5) is small
    assert torch.equal(project_l2(torch.zeros(3, 4, 4), 1.0), torch.zeros(3, 4, 4))


def test_map_stays_in_the_ball_after_every_stage(untrained):
    model, images = untrained
    settings = AgnosticSettings(**{**TINY, "cycles": 3, "eta_reference": (3, 224, 224)})
    eta = scaled_eta(30.0, (3, 16, 16))
    stages: list[tuple[int, str, float]] = []
    nu = input_agnostic_map(
        model,
        images,
        1,
        settings,
        generator=torch.Generator().manual_seed(3),
        on_stage=lambda cycle, stage, m: stages.append((cycle, stage, float(m.norm()))),
    )
    assert [(c, s) for c, s, _ in stages] == [
        (c, s) for c in range(3) for s in ("search", "refine")
    ]
    assert all(norm <= eta * (1 + 1e-5) for _, _, norm in stages), stages
    assert stages[0][2] == pytest.approx(eta, rel=1e-5)  # the search fills the ball
    assert float(nu.norm()) <= eta * (1 + 1e-5)
    assert float(nu.abs().max()) <= 1.0  # clipped to the dynamic range's span


def test_class_maps_are_reproducible_and_draws_differ(untrained):
    model, images = untrained
    settings = AgnosticSettings(batch_size=8, iterations=5, refine_iterations=3, cycles=2, eta=4.0)
    first = class_maps(model, images, [2, 0], n_draws=2, settings=settings, seed=7)
    again = class_maps(model, images, [2, 0], n_draws=2, settings=settings, seed=7)
    assert first.maps.shape == (4, 3, 16, 16)
    assert first.rows == [(2, 0), (2, 1), (0, 0), (0, 1)]
    assert torch.equal(first.maps, again.maps)
    assert first.diagnostics == again.diagnostics
    assert not torch.equal(first.maps[0], first.maps[1])  # draws of one class differ
    assert not torch.equal(first.maps[0], first.maps[2])  # classes differ
    other_seed = class_maps(model, images, [2], n_draws=1, settings=settings, seed=8)
    assert not torch.equal(other_seed.maps[0], first.maps[0])
    assert first.success.shape == (4,) and ((first.success >= 0) & (first.success <= 1)).all()
    eta = settings.radius((3, 16, 16))
    assert (first.norms <= eta * (1 + 1e-5)).all()


def test_map_leaves_the_model_as_it_was(untrained):
    model, images = untrained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    settings = AgnosticSettings(batch_size=4, iterations=2, refine_iterations=2, cycles=1)
    a = input_agnostic_map(model, images, 1, settings, generator=torch.Generator().manual_seed(5))
    b = input_agnostic_map(model, images, 1, settings, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert model.training
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("architecture", "layer_name"),
    [("cnn2", "relu2"), ("minicnn", "blocks.3.relu2"), ("miniresnet", "blocks.3.relu2")],
)
def test_xi_layer_and_weights(architecture, layer_name):
    torch.manual_seed(0)
    model = build_model(architecture, 3, 8, 4).eval()
    nu = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    layer = activation_layer(model, nu.unsqueeze(0))
    assert layer is dict(model.named_modules())[layer_name]
    xi = activation_weights(model, layer, nu)
    assert xi.shape == nu.shape and not xi.requires_grad
    assert float(xi.min()) >= 0.0 and float(xi.max()) <= 1.0
    assert torch.equal(xi[0], xi[2])  # one spatial map for every channel


def test_scaled_eta():
    assert scaled_eta(30.0, (3, 32, 32)) == pytest.approx(30 * math.sqrt(3072 / 150528))
    assert scaled_eta(30.0, (3, 32, 32)) == pytest.approx(30 / 7)  # 4.29
    assert scaled_eta(30.0, (1, 32, 32)) == pytest.approx(2.47, abs=0.01)
    assert scaled_eta(30.0, (3, 224, 224)) == pytest.approx(30.0)
    assert scaled_eta(2.0, (4, 4), reference=(1, 4)) == pytest.approx(4.0)
    assert AgnosticSettings().radius((3, 32, 32)) == pytest.approx(scaled_eta(30.0, (3, 32, 32)))
    assert AgnosticSettings(eta=4.0, eta_reference=None).radius((3, 32, 32)) == 4.0
    with pytest.raises(ConfigError, match="eta"):
        scaled_eta(-1.0, (3, 32, 32))
    with pytest.raises(ConfigError, match="image_shape"):
        scaled_eta(30.0, (3, 0, 32))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 1.5),
        ("iterations", 0),
        ("iterations", True),
        ("eta", 0.0),
        ("eta", float("nan")),
        ("eta_reference", (3, 0, 224)),
        ("eta_reference", [3, 224, 224]),
        ("refine_iterations", -1),
        ("refine_lr", 0),
        ("lam", -1.0),
        ("cycles", 0),
        ("beta1", 1.0),
        ("beta2", -0.1),
        ("adam_eps", 0),
        ("recompute_xi", 1),
        ("clip_max", float("inf")),
        ("eval_batch_size", 0),
    ],
)
def test_bad_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        AgnosticSettings(**{key: value})


def test_bad_mappings_and_arguments(untrained):
    with pytest.raises(ConfigError, match="clip_min"):
        AgnosticSettings(clip_min=1.0, clip_max=0.0)
    with pytest.raises(ConfigError, match="etta"):
        AgnosticSettings.from_mapping({"etta": 4.0})
    ok = AgnosticSettings.from_mapping({"eta": 4.0, "eta_reference": [3, 32, 32], "cycles": 1})
    assert ok.eta_reference == (3, 32, 32) and ok.cycles == 1
    model, images = untrained
    tiny = AgnosticSettings(batch_size=2, iterations=1, refine_iterations=0, cycles=1)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match="label"):
        input_agnostic_map(model, images, 4, tiny, generator=generator)
    with pytest.raises(ConfigError, match="n_draws"):
        class_maps(model, images, [0], n_draws=0, settings=tiny)
    with pytest.raises(ConfigError, match="labels"):
        class_maps(model, images, [], n_draws=1, settings=tiny)
    with pytest.raises(ValueError, match="samples"):
        input_agnostic_map(model, images[0], 0, tiny, generator=generator)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_maps_are_reproducible(untrained):
    model, images = untrained
    model = build_model("cnn2", 3, 16, 4).cuda()
    settings = AgnosticSettings(batch_size=8, iterations=5, refine_iterations=3, eta=4.0)
    first = class_maps(model, images, [1], n_draws=2, settings=settings, seed=3)
    again = class_maps(model, images, [1], n_draws=2, settings=settings, seed=3)
    assert first.maps.device.type == "cpu"
    assert torch.equal(first.maps, again.maps)
    assert not torch.equal(first.maps[0], first.maps[1])
