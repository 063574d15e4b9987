"""Sanity checks: parameter randomisation (plain, smooth and efficient), data randomisation and
input invariance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.models import build_model
from saliency_fingerprints.primary import permuted_labels
from saliency_fingerprints.saliency import build_method
from saliency_fingerprints.sanity import (
    ShiftedInput,
    complexity_scores,
    discrete_entropy,
    fully_randomised_model,
    randomised_models,
    similarities,
    smooth_randomisation,
    smoothed_maps,
    smoothing_noise,
    spearman,
    ssim,
    weight_layers,
)
from saliency_fingerprints.sanity_tables import markdown_summary, summarise


def model(architecture: str = "cnn2", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(architecture, 1, 8, 3).eval()


def changed_layers(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    return [
        name
        for name in weight_layers(a)
        if not torch.equal(a.get_submodule(name).weight, b.get_submodule(name).weight)
    ]


def test_weight_layers_in_forward_order():
    assert weight_layers(model("cnn2")) == ["conv1", "conv2", "fc"]
    names = weight_layers(model("miniresnet"))
    assert names[0] == "stem" and names[-2:] == ["fc1", "fc2"]


def test_cascading_randomises_the_top_k_layers_at_step_k():
    trained = model("miniresnet")
    top_down = list(reversed(weight_layers(trained)))
    steps = 0
    for layer, step, net in randomised_models(trained, "cascading", seed=0):
        steps += 1
        assert layer == top_down[step - 1]
        assert sorted(changed_layers(trained, net)) == sorted(top_down[:step])
    assert steps == len(top_down)
    assert changed_layers(trained, model("miniresnet")) == [], "the trained model is untouched"


def test_independent_randomises_one_layer_with_the_cascade_weights():
    trained = model("cnn2")
    cascade = {
        layer: net.get_submodule(layer).weight.clone()
        for layer, _, net in randomised_models(trained, "cascading", seed=3)
    }
    for layer, _, net in randomised_models(trained, "independent", seed=3):
        assert changed_layers(trained, net) == [layer]
        assert torch.equal(net.get_submodule(layer).weight, cascade[layer])
        assert not net.get_submodule(layer).bias.any()


def test_unknown_randomisation_names_the_key():
    with pytest.raises(ConfigError, match="sanity_checks.parameter_randomisation"):
        next(randomised_models(model(), "bottom_up", seed=0))


def test_shifted_input_computes_the_same_function():
    net = model()
    x = torch.rand(5, 1, 8, 8)
    shifted = ShiftedInput(net, 1.5)
    torch.testing.assert_close(shifted(x + 1.5), net(x))


@pytest.mark.parametrize(
    "method,params,invariant",
    [
        ("grad", {}, True),
        ("smoothgrad", {"n_samples": 4, "seed": 0}, True),
        ("integrated_gradients", {"n_steps": 8, "baseline": "zero"}, False),
    ],
)
def test_input_invariance(method, params, invariant):
    """Kindermans et al.: Grad and SmoothGrad are unchanged by a compensated constant shift;
    Integrated Gradients from a zero baseline is not."""
    net = model()
    x = torch.rand(6, 1, 8, 8)
    targets = torch.zeros(6, dtype=torch.long)
    ids = list(range(6))
    before = build_method(method, net, params, 64).attribute(x, targets, ids)
    after = build_method(method, ShiftedInput(net, 1.0), params, 64).attribute(
        x + 1.0, targets, ids
    )
    if invariant:
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-6)
    else:
        assert (after - before).abs().max() > 0.1 * before.abs().max()


def test_spearman_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.random((4, 2, 6, 6))
    np.testing.assert_allclose(spearman(a, a, absolute=True), 1.0)
    np.testing.assert_allclose(spearman(a, -a, absolute=False), -1.0)
    np.testing.assert_allclose(spearman(a, -a, absolute=True), 1.0)
    np.testing.assert_allclose(spearman(a, 3 * a, absolute=False), 1.0)  # ranks only
    assert np.isnan(spearman(a, np.zeros_like(a), absolute=True)).all()
    np.testing.assert_allclose(ssim(a, a), 1.0)
    b = rng.random((4, 2, 6, 6))
    assert (ssim(a, b) < 0.9).all()
    assert (np.abs(spearman(a, b, absolute=True)) < 0.6).all()


def grad_maps(net: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """Grad's maps of class 0 (the ``explain`` of the smooth and efficient tests)."""
    targets = torch.zeros(len(images), dtype=torch.long)
    method = build_method("grad", net.eval(), {}, 64)
    return method.attribute(images, targets, list(range(len(images)))).detach().numpy()


def smooth_ladder(net, images, **settings) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    return list(smooth_randomisation(grad_maps, net, images, mode="cascading", **settings))


@pytest.mark.parametrize("noise_level", [0.0, 0.5])
def test_smooth_randomisation_of_one_sample_is_the_plain_test(noise_level):
    """One copy is the image itself (as in Quantus): sMPRT with n_samples 1 is the plain test."""
    net, images = model(), torch.rand(6, 1, 8, 8)
    reference = grad_maps(net, images)
    plain = [
        (layer, step, similarities(reference, grad_maps(randomised, images)))
        for layer, step, randomised in randomised_models(net, "cascading", seed=0)
    ]
    smooth = smooth_ladder(net, images, seed=0, n_samples=1, noise_level=noise_level)
    assert [(layer, step) for layer, step, _ in smooth] == [
        (layer, step) for layer, step, _ in plain
    ]
    for (*_, expected), (*_, got) in zip(plain, smooth, strict=True):
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])


def test_smoothing_noise_is_keyed_by_seed_and_draw_and_scaled_per_image():
    images = np.random.default_rng(0).random((3, 1, 40, 40)).astype(np.float32)
    images[1] *= 4  # a wider range: noise 4 times as large
    noise = smoothing_noise(images, 1, 0.1, seed=0)
    assert noise.shape == images.shape and noise.dtype == np.float32
    np.testing.assert_array_equal(noise, smoothing_noise(images, 1, 0.1, seed=0))
    assert not np.array_equal(noise, smoothing_noise(images, 2, 0.1, seed=0))
    assert not np.array_equal(noise, smoothing_noise(images, 1, 0.1, seed=1))
    spread = images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))
    np.testing.assert_allclose(noise.std(axis=(1, 2, 3)), 0.1 * spread, rtol=0.1)


def test_smoothed_maps_average_the_image_and_its_noisy_copies():
    net, images = model(), torch.rand(4, 1, 8, 8)
    got = smoothed_maps(grad_maps, net, images, n_samples=3, noise_level=0.2, seed=5)
    copies = [images] + [
        images + torch.from_numpy(smoothing_noise(images.numpy(), draw, 0.2, seed=5))
        for draw in (1, 2)
    ]
    expected = np.mean([grad_maps(net, x) for x in copies], axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(got, grad_maps(net, images))


def test_smooth_randomisation_is_deterministic_for_a_seed():
    net, images = model(), torch.rand(5, 1, 8, 8)
    settings = {"n_samples": 3, "noise_level": 0.3}
    first = smooth_ladder(net, images, seed=2, **settings)
    again = smooth_ladder(net, images, seed=2, **settings)
    other = smooth_ladder(net, images, seed=3, **settings)
    for (*_, a), (*_, b), (*_, c) in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a["spearman_abs"], b["spearman_abs"])
        assert not np.array_equal(a["spearman_abs"], c["spearman_abs"])


def test_fully_randomised_model_is_the_cascade_s_last_step():
    trained = model("miniresnet")
    full = fully_randomised_model(trained, seed=4)
    *_, (_, _, last) = randomised_models(trained, "cascading", seed=4)
    assert sorted(changed_layers(trained, full)) == sorted(weight_layers(trained))
    assert changed_layers(full, last) == []


def test_discrete_entropy_and_the_complexity_ratio():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((4, 1, 8, 8))
    peaked = np.zeros_like(noise)
    peaked[:, 0, 3, 4] = 1.0
    peaked[:, 0, 3, 5] = 0.5
    assert (discrete_entropy(np.zeros_like(noise), 100) == 0).all()  # a constant map
    spread = discrete_entropy(noise, 100)
    assert (spread > 2.5).all() and (spread <= np.log(64)).all()  # 64 pixels in 100 bins
    assert (discrete_entropy(peaked, 100) < 0.2).all()
    # the two channels are summed (as |map|) before the histogram
    two = np.concatenate([noise, -noise], axis=1)
    np.testing.assert_allclose(discrete_entropy(two, 10), discrete_entropy(noise, 10))
    same = complexity_scores(noise, noise, 100)
    np.testing.assert_allclose(same["complexity_ratio"], 1.0)
    np.testing.assert_allclose(same["complexity_trained"], spread)
    assert (complexity_scores(peaked, noise, 100)["complexity_ratio"] > 5).all()
    assert (complexity_scores(noise, peaked, 100)["complexity_ratio"] < 1).all()
    assert np.isnan(complexity_scores(np.zeros_like(noise), noise, 100)["complexity_ratio"]).all()


def test_permuted_labels_keep_the_class_balance():
    labels = np.repeat(np.arange(5), 20)
    permuted = permuted_labels(labels, seed=0)
    assert np.array_equal(np.bincount(permuted), np.bincount(labels))
    assert (permuted != labels).mean() > 0.5
    assert np.array_equal(permuted, permuted_labels(labels, seed=0))
    assert not np.array_equal(permuted, permuted_labels(labels, seed=1))


def test_summary_and_markdown():
    rows = []
    for step, layer in [(1, "fc"), (2, "conv2")]:
        for sample in range(4):
            rows.append(
                dict(
                    primary="p",
                    method="grad",
                    test="randomised_cascading",
                    layer=layer,
                    step=step,
                    sample=sample,
                    spearman_abs=0.5 / step + 0.01 * sample,
                    spearman=0.0,
                    ssim=0.1,
                )
            )
    rows += [
        dict(
            primary="p",
            method="grad",
            test="input_shift",
            layer="-",
            step=0,
            sample=s,
            spearman_abs=1.0,
            spearman=1.0,
            ssim=1.0,
        )
        for s in range(4)
    ]
    rows[0]["spearman_abs"] = float("nan")  # a constant map: no rank correlation
    summary = summarise([pd.DataFrame(rows)])
    assert len(summary) == 3 and set(summary["n_images"]) == {4}
    assert list(summary["n_undefined"]) == [1, 0, 0]
    fc = summary[summary["layer"] == "fc"].iloc[0]
    assert fc["spearman_abs_median"] == pytest.approx(0.52)  # over the 3 defined images
    assert fc["spearman_abs_q1"] <= fc["spearman_abs_median"] <= fc["spearman_abs_q3"]
    text = markdown_summary(summary)
    assert "## p: cascading parameter randomisation" in text
    assert "## Data randomisation and input invariance" in text and "input shift" in text
    assert "1: fc" in text and "2: conv2" in text and "| Grad " in text
    assert "1 of 4 maps constant" in text


def test_summary_and_markdown_of_smooth_and_efficient_randomisation():
    base = dict(primary="p", method="grad", spearman=0.0, ssim=0.1)
    rows = [
        dict(base, test=test, layer="fc", step=1, sample=s, spearman_abs=value)
        for test, value in [("randomised_cascading", 0.2), ("smooth_randomised_cascading", 0.6)]
        for s in range(4)
    ]
    rows += [
        dict(
            primary="p",
            method=method,
            test="efficient_randomisation",
            layer="all",
            step=1,
            sample=s,
            complexity_trained=2.0,
            complexity_randomised=2.0 * ratio,
            complexity_ratio=ratio,
        )
        for method, ratio in [("grad", 1.5), ("guided_backprop", 0.9)]
        for s in range(4)
    ]
    rows[-1]["complexity_ratio"] = float("nan")  # a constant trained map: no ratio
    summary = summarise([pd.DataFrame(rows)])
    efficient = summary[summary["test"] == "efficient_randomisation"].set_index("method")
    assert efficient.loc["grad", "complexity_ratio_median"] == pytest.approx(1.5)
    assert efficient.loc["grad", "complexity_randomised_median"] == pytest.approx(3.0)
    assert list(efficient["n_undefined"]) == [0, 1]
    assert summary.set_index("test").loc["randomised_cascading", "n_undefined"] == 0
    text = markdown_summary(summary)
    assert "## p: cascading parameter randomisation, top layer first" in text
    assert "## p: smooth cascading parameter randomisation (sMPRT), top layer first" in text
    assert "Hedström et al. (2023)'s smooth MPRT" in text
    assert "## Efficient parameter randomisation (eMPRT)" in text
    assert "| p Grad |" in text and "| yes " in text
    assert "| p GBP  |" in text and "| **no** " in text
    assert "3 of 4 trained maps constant (no complexity ratio" not in text
    assert "1 of 4 trained maps constant (no complexity ratio" in text
    assert "Data randomisation" not in text  # no random-label or shift rows here
    smooth = text.split("(sMPRT)")[1]
    assert "0.600" in smooth and "0.200" not in smooth


def test_sanity_outputs_of_the_workflow(tiny_run):
    """The default config's sanity checks: a row per (image, stage), Grad and SmoothGrad pass
    the input-shift test exactly, sMPRT and eMPRT have their rows and sections, and the figures
    and the labelled map stores exist."""
    results = tiny_run / "results"
    table = pd.read_csv(results / "tables/sanity_checks.csv")
    assert set(table["method"]) == {"grad", "smoothgrad", "integrated_gradients"}
    assert set(table["test"]) == {
        "randomised_cascading",
        "random_labels",
        "input_shift",
        "smooth_randomised_cascading",
        "efficient_randomisation",
    }
    efficient = table[table["test"] == "efficient_randomisation"]
    assert len(efficient) == 3 and efficient["complexity_ratio_median"].notna().all()
    assert efficient["spearman_abs_median"].isna().all()
    text = (results / "tables/sanity_checks.md").read_text()
    assert "## cnn2-seed0: smooth cascading parameter randomisation (sMPRT)" in text
    assert "## Efficient parameter randomisation (eMPRT)" in text
    shift = table[table["test"] == "input_shift"].set_index("method")
    assert shift.loc["grad", "spearman_abs_median"] == pytest.approx(1.0)
    assert shift.loc["smoothgrad", "spearman_abs_median"] == pytest.approx(1.0)
    assert shift.loc["integrated_gradients", "spearman_abs_median"] < 0.999
    per_image = pd.read_csv(results / "sanity/grad/cnn2-seed0.csv")
    n_images = per_image["sample"].nunique()
    # 3 weight layers, random labels, shift; sMPRT's 3 layers; eMPRT
    assert len(per_image) == n_images * (3 + 2 + 3 + 1)
    store = xr.open_zarr(results / "sanity/grad/cnn2-seed0.zarr", consolidated=False)
    assert store["maps"].dims == ("stage", "sample", "channel", "y", "x")
    assert list(store["stage"].values)[0] == "trained"
    assert "provenance" in store.attrs
    for figure in ("figures/sanity/rank_correlation.png", "figures/sanity/maps/cnn2-seed0.png"):
        assert (results / figure).stat().st_size > 0
    metrics = (results / "sanity/primaries/cnn2-seed0-random_labels/metrics.json").read_text()
    assert '"labels": "permuted (seed 0)"' in metrics


def test_sanity_table_states_the_random_label_copy(tiny_run):
    """The tiny config caps the copy at 2 epochs, short of the 0.99 target: its metrics and the
    sanity table say what it reached, and that it is not Adebayo et al.'s test."""
    results = tiny_run / "results"
    path = results / "sanity/primaries/cnn2-seed0-random_labels/metrics.json"
    metrics = json.loads(path.read_text())
    assert metrics["epochs_run"] == metrics["max_epochs"] == len(metrics["history"]) == 2
    assert metrics["target_train_accuracy"] == 0.99 and metrics["target_reached"] is False
    table = pd.read_csv(results / "tables/sanity_checks.csv")
    copies = table[table["test"] == "random_labels"]
    assert len(copies) == 3  # one row per method, each with the copy's numbers
    for column, key in [
        ("copy_train_accuracy", "final_train_accuracy"),
        ("copy_test_accuracy", "final_test_accuracy"),
    ]:
        assert list(copies[column]) == pytest.approx([metrics[key]] * 3, rel=1e-5)
    assert not copies["copy_target_reached"].any()
    text = (results / "tables/sanity_checks.md").read_text()
    assert f"{metrics['final_train_accuracy']:.3f} (not reached)" in text
    assert "**cnn2-seed0: target not reached.**" in text
