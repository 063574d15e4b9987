"""Sanity checks: parameter randomisation, data randomisation and input invariance."""

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
    markdown_summary,
    randomised_models,
    spearman,
    ssim,
    summarise,
    weight_layers,
)


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


def test_sanity_outputs_of_the_workflow(tiny_run):
    """The default config's sanity checks: a row per (image, stage), Grad and SmoothGrad pass
    the input-shift test exactly, and the figures and the labelled map stores exist."""
    results = tiny_run / "results"
    table = pd.read_csv(results / "tables/sanity_checks.csv")
    assert set(table["method"]) == {"grad", "smoothgrad", "integrated_gradients"}
    assert set(table["test"]) == {"randomised_cascading", "random_labels", "input_shift"}
    shift = table[table["test"] == "input_shift"].set_index("method")
    assert shift.loc["grad", "spearman_abs_median"] == pytest.approx(1.0)
    assert shift.loc["smoothgrad", "spearman_abs_median"] == pytest.approx(1.0)
    assert shift.loc["integrated_gradients", "spearman_abs_median"] < 0.999
    per_image = pd.read_csv(results / "sanity/grad/cnn2-seed0.csv")
    n_images = per_image["sample"].nunique()
    assert len(per_image) == n_images * (3 + 2)  # 3 weight layers, random labels, shift
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
