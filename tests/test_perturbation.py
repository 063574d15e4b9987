"""Meaningful Perturbation: it finds the evidence, batching and seeds behave, bad keys are named."""

from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from torch import nn

from saliency_fingerprints.configuration import check_schema
from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import METHODS, SHORT_NAMES, build_method
from saliency_fingerprints.saliency.perturbation import (
    MeaningfulPerturbation,
    gaussian_blur,
    total_variation,
)

SCHEMA = Path(__file__).parents[1] / "config/schema/config.schema.yaml"


class PatchDetector(nn.Module):
    """Class 0's logit grows with how much of a bright 4x4 patch is intact; class 1 is constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 4, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 16)
        self.relu = nn.ReLU()

    def forward(self, x):
        evidence = self.relu(self.conv(x) - 0.5).flatten(1).amax(1) * 20
        return torch.stack([evidence, torch.full_like(evidence, 2.0)], 1)


def patch_images(n, size=16, seed=0):
    """Dim noise with one bright 4x4 patch per image, at a seeded random position."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.2
    for i, (r, c) in enumerate(torch.randint(0, size - 4, (n, 2), generator=g).tolist()):
        x[i, 0, r : r + 4, c : c + 4] = 1.0
    return x


def toy_engine(**overrides):
    params = dict(iterations=80, mask_size=8, blur_sigma=0.1, noise_std=0.0, seed=0)
    params.update(overrides)
    return MeaningfulPerturbation(PatchDetector().eval(), pass_size=64, **params)


def test_optimised_mask_deletes_more_evidence_than_a_random_mask_of_the_same_area():
    engine = toy_engine()
    x = patch_images(10)
    targets = torch.zeros(10, dtype=torch.long)
    with torch.no_grad():
        original = engine.target_scores(x, targets)
    assert (original > 0.99).all()
    masks = engine.optimise_masks(x, targets, list(range(10)))
    # a random mask of the same area: the same cell values at random positions
    g = torch.Generator().manual_seed(1)
    side = engine.mask_size
    with torch.no_grad():
        optimised = engine.target_scores(engine.perturb(x, masks), targets)
        randoms = torch.stack(
            [
                engine.target_scores(
                    engine.perturb(
                        x,
                        torch.stack(
                            [
                                m.flatten()[torch.randperm(side * side, generator=g)].view(
                                    1, side, side
                                )
                                for m in masks
                            ]
                        ),
                    ),
                    targets,
                )
                for _ in range(5)
            ]
        )
    drop_optimised = original - optimised
    drop_random = original - randoms.mean(0)
    assert drop_optimised.mean() > 2 * drop_random.mean()
    assert (drop_optimised > drop_random).float().mean() >= 0.8
    assert optimised.mean() < 0.5  # the evidence is really gone, not just dented
    # the deleted region sits on the patch: the map is larger there than elsewhere
    maps = 1 - engine.upsample(masks, 16)
    on_patch = x > 0.99
    assert (maps[on_patch].mean() > 1.5 * maps[~on_patch].mean()).item()


def test_map_contract_and_registration():
    assert METHODS["meaningful_perturbation"] is MeaningfulPerturbation
    assert SHORT_NAMES["meaningful_perturbation"] == "MP"
    torch.manual_seed(0)
    model = build_model("cnn2", 3, 8, 4).eval()
    params = {"iterations": 7, "mask_size": 4, "noise_std": 0.05, "seed": 2}
    engine = build_method("meaningful_perturbation", model, params, pass_size=16)
    assert engine.gradient_evaluations == 7
    assert engine.params()["iterations"] == 7 and engine.params()["mask_size"] == 4
    x = torch.rand(5, 3, 8, 8)
    maps = engine.attribute(x, None, [0, 1, 2, 3, 4])
    assert maps.shape == x.shape
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.equal(maps[:, 0], maps[:, 1]) and torch.equal(maps[:, 0], maps[:, 2])
    assert maps.abs().sum() > 0  # something was deleted
    # the model's own parameters collect no gradients
    assert all(p.grad is None for p in model.parameters())


def test_batching_does_not_change_results():
    torch.manual_seed(0)
    model = build_model("cnn2", 1, 8, 10).double().eval()
    x = torch.rand(7, 1, 8, 8, dtype=torch.float64)
    targets = torch.arange(7) % 10
    ids = list(range(50, 57))
    params = {"iterations": 12, "mask_size": 4, "noise_std": 0.05, "seed": 3}
    whole = build_method("meaningful_perturbation", model, params, 64).attribute(x, targets, ids)
    small = build_method("meaningful_perturbation", model, params, 2)
    parts = torch.cat(
        [small.attribute(x[:3], targets[:3], ids[:3]), small.attribute(x[3:], targets[3:], ids[3:])]
    )
    assert torch.allclose(whole, parts, rtol=1e-9, atol=1e-10)
    # reordering the images reorders the maps: noise is keyed by sample id, not position
    order = [6, 2, 0, 5, 1, 4, 3]
    shuffled = small.attribute(x[order], targets[order], [ids[i] for i in order])
    assert torch.allclose(shuffled, whole[order], rtol=1e-9, atol=1e-10)


def test_seeded_and_deterministic():
    torch.manual_seed(0)
    model = build_model("cnn2", 1, 8, 3).eval()
    x = torch.rand(4, 1, 8, 8)
    base = {"iterations": 10, "mask_size": 4, "noise_std": 0.1}
    a = MeaningfulPerturbation(model, **base, seed=0).attribute(x, None, [0, 1, 2, 3])
    b = MeaningfulPerturbation(model, **base, seed=0).attribute(x, None, [0, 1, 2, 3])
    c = MeaningfulPerturbation(model, **base, seed=1).attribute(x, None, [0, 1, 2, 3])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    d = MeaningfulPerturbation(model, **base, noise_on="mask", seed=0).attribute(x, None, range(4))
    assert d.shape == x.shape and not torch.equal(a, d)


def test_blur_and_total_variation():
    flat = torch.full((2, 3, 10, 10), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-6)
    noisy = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    blurred = gaussian_blur(noisy, 1.5)
    assert blurred.shape == noisy.shape
    assert blurred.std() < 0.5 * noisy.std()
    assert torch.allclose(blurred.mean(), noisy.mean(), atol=0.02)
    assert torch.equal(gaussian_blur(noisy, 0.0), noisy)
    assert gaussian_blur(torch.rand(1, 1, 3, 3), 5.0).shape == (1, 1, 3, 3)  # kernel > image
    assert torch.equal(total_variation(torch.ones(2, 1, 4, 4), 3.0), torch.zeros(2))
    step = torch.zeros(1, 1, 2, 2)
    step[..., 1] = 1.0  # one vertical edge: |dx| = 1 in both rows, dy = 0
    assert total_variation(step, 3.0).item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "key,value",
    [
        ("iterations", 0),
        ("learning_rate", 0.0),
        ("l1_coeff", -1.0),
        ("tv_coeff", -0.1),
        ("tv_beta", 0.5),
        ("mask_size", 0),
        ("mask_init", 1.5),
        ("blur_sigma", -1.0),
        ("noise_std", -0.1),
        ("noise_on", "weights"),
        ("score", "loss"),
    ],
)
def test_invalid_parameters_name_the_key(key, value):
    """The schema bounds every key (the constructor does not repeat its bounds)."""
    cfg = tiny_config()
    cfg["methods"]["meaningful_perturbation"] = {key: value}
    with pytest.raises(ConfigError, match=f"methods.meaningful_perturbation.{key}: got"):
        check_schema(cfg, SCHEMA)


@pytest.mark.parametrize("key,value", [("noise_on", "weights"), ("score", "loss")])
def test_unknown_options_are_rejected_by_the_engine_too(key, value):
    """Options the code branches on stop a direct caller too (they would silently do nothing)."""
    model = build_model("cnn2", 1, 8, 3)
    with pytest.raises(ConfigError, match=f"methods.meaningful_perturbation.{key} '{value}'"):
        MeaningfulPerturbation(model, **{key: value})


def test_mask_larger_than_image_and_unknown_keys_are_rejected():
    model = build_model("cnn2", 1, 8, 3)
    engine = MeaningfulPerturbation(model, iterations=1, mask_size=16)
    with pytest.raises(ConfigError, match="mask_size must be at most the image side"):
        engine.attribute(torch.rand(2, 1, 8, 8))
    with pytest.raises(ConfigError, match="methods.meaningful_perturbation"):
        build_method("meaningful_perturbation", model, {"n_samples": 3}, 64)


def test_device_noise_is_keyed_by_sample_and_block():
    """The GPU's noise (``keyed``: drawn on the device for a whole block at once) has the
    configured spread, does not depend on the batch, and differs between blocks and seeds."""
    engine = toy_engine(noise_std=0.5, iterations=60)
    shape = (1, 6, 6)

    def noises(ids, **kw):
        stream = engine.noise_stream(ids, shape, torch.float32, torch.device("cpu"), keyed=True)
        return torch.stack(list(stream))  # (iterations, n, *shape)

    both = noises([4, 9])
    alone = noises([9])
    assert both.shape == (60, 2, *shape)
    assert torch.equal(both[:, 1], alone[:, 0])  # image 9's noise does not depend on its batch
    assert not torch.equal(both[:25, 0], both[25:50, 0])  # blocks differ
    assert abs(float(both.std()) - 0.5) < 0.03 and abs(float(both.mean())) < 0.03
    other = toy_engine(noise_std=0.5, iterations=60, seed=1)
    stream = other.noise_stream([4, 9], shape, torch.float32, torch.device("cpu"), keyed=True)
    assert not torch.equal(torch.stack(list(stream)), both)
    # the CPU default is still the per-image generator stream
    cpu = engine.noise_stream([4, 9], shape, torch.float32, torch.device("cpu"))
    assert not torch.equal(torch.stack(list(cpu)), both)
