"""The data randomisation test's random-label copies: trained until they memorise their permuted
labels (a train-accuracy target, an epoch cap), and the sanity table says what they reached."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import with_defaults

from saliency_fingerprints.datasets import prepare_dataset
from saliency_fingerprints.models import build_model
from saliency_fingerprints.sanity import train_random_label_primary
from saliency_fingerprints.sanity_tables import combine_sanity_tables
from saliency_fingerprints.training import TrainSettings, train_classifier

SETTINGS = dict(batch_size=16, learning_rate=0.01, optimizer="adam")


def random_problem(n: int = 48, classes: int = 3, seed: int = 0):
    """Images with labels that mean nothing: only memorising fits them."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return (x, y), (x[:8], y[:8])


def train(epochs: int, target: float | None) -> list[dict]:
    train_set, test_set = random_problem()
    torch.manual_seed(0)
    model = build_model("cnn2", 1, 8, 3)
    settings = TrainSettings(epochs=epochs, **SETTINGS)
    return train_classifier(model, train_set, test_set, settings, 0, stop_at_train_accuracy=target)


@pytest.fixture(scope="module")
def full_history() -> list[dict]:
    return train(25, None)


def test_without_a_target_every_epoch_runs(full_history):
    assert [r["epoch"] for r in full_history] == list(range(1, 26))


def test_stops_at_the_first_epoch_at_or_above_the_target(full_history):
    accuracies = [r["train_accuracy"] for r in full_history]
    # a target first met in the middle of training (an exact hit: "at or above" counts)
    stop = next(e for e in range(5, 20) if accuracies[e - 1] > max(accuracies[: e - 1]))
    target = accuracies[stop - 1]
    history = train(25, target)
    assert len(history) == stop
    assert history[-1]["train_accuracy"] >= target
    assert all(r["train_accuracy"] < target for r in history[:-1])
    assert history == full_history[:stop], "up to the stop, training is unchanged"


def test_never_runs_past_the_cap(full_history):
    history = train(3, 1.0)
    assert len(history) == 3 and history[-1]["train_accuracy"] < 1.0
    assert history == full_history[:3]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "digits.zarr"
    cfg = {
        "name": "digits",
        "source": "sklearn_digits",
        "test_fraction": 0.2,
        "split_seed": 0,
        "max_train_images": 80,
        "max_test_images": 40,
    }
    prepare_dataset(cfg=with_defaults("dataset", cfg), out=out)
    return out


def copy_metrics(store, tmp_path, cap: int, target: float | None) -> dict:
    cfg = with_defaults("primary_training", train_fraction=0.5, epochs=cap, **SETTINGS)
    return train_random_label_primary(
        dataset_path=store,
        architecture="cnn2",
        seed=0,
        cfg=cfg,
        label_seed=0,
        target_train_accuracy=target,
        weights_out=tmp_path / "model.safetensors",
        metrics_out=tmp_path / "metrics.json",
        device=torch.device("cpu"),
        threads=1,
    )


def test_copy_reports_a_target_not_reached(tiny_store, tmp_path):
    metrics = copy_metrics(tiny_store, tmp_path, cap=2, target=1.0)
    assert metrics["epochs_run"] == 2 and metrics["max_epochs"] == 2
    assert metrics["target_reached"] is False
    assert metrics["final_train_accuracy"] < 1.0
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["target_train_accuracy"] == 1.0 and written["labels"] == "permuted (seed 0)"
    assert (tmp_path / "model.safetensors").stat().st_size > 0


def test_copy_stops_once_the_target_is_reached(tiny_store, tmp_path):
    # every class is in the stratified subset: any prediction is right for >= 1/40 of it
    metrics = copy_metrics(tiny_store, tmp_path, cap=5, target=0.01)
    assert metrics["epochs_run"] == 1 and metrics["target_reached"] is True


def per_image_table(primary: str) -> pd.DataFrame:
    rows = [
        dict(
            primary=primary,
            method="grad",
            test=test,
            layer=layer,
            step=step,
            sample=sample,
            spearman_abs=value,
            spearman=value,
            ssim=value,
        )
        for test, layer, step, value in [
            ("randomised_cascading", "fc", 1, 0.3),
            ("random_labels", "-", 0, 0.2),
            ("input_shift", "-", 0, 1.0),
        ]
        for sample in range(3)
    ]
    return pd.DataFrame(rows)


def metrics_json(path, architecture: str, reached: bool, train_accuracy: float) -> str:
    record = {
        "primary": f"{architecture}-seed0-random_labels",
        "architecture": architecture,
        "seed": 0,
        "target_train_accuracy": 0.99,
        "max_epochs": 40,
        "epochs_run": 23 if reached else 40,
        "target_reached": reached,
        "final_train_accuracy": train_accuracy,
        "final_test_accuracy": 0.104,
    }
    path.write_text(json.dumps(record))
    return str(path)


def test_sanity_table_states_what_each_copy_reached(tmp_path):
    parts, metrics = [], []
    for architecture, reached, accuracy in [("cnn2", True, 0.993), ("miniresnet", False, 0.417)]:
        part = tmp_path / f"{architecture}.csv"
        per_image_table(f"{architecture}-seed0").to_csv(part, index=False)
        parts.append(part)
        metrics.append(
            metrics_json(tmp_path / f"{architecture}.json", architecture, reached, accuracy)
        )
    summary = combine_sanity_tables(
        parts=parts,
        out_csv=tmp_path / "s.csv",
        out_md=tmp_path / "s.md",
        random_label_metrics=metrics,
    )

    table = pd.read_csv(tmp_path / "s.csv")
    copies = table[table["test"] == "random_labels"].set_index("primary")
    assert copies.loc["cnn2-seed0", "copy_train_accuracy"] == pytest.approx(0.993)
    assert copies.loc["miniresnet-seed0", "copy_train_accuracy"] == pytest.approx(0.417)
    assert copies.loc["miniresnet-seed0", "copy_epochs"] == 40
    assert copies.loc["cnn2-seed0", "copy_test_accuracy"] == pytest.approx(0.104)
    assert list(copies["copy_target_reached"]) == [True, False]
    assert table[table["test"] != "random_labels"]["copy_train_accuracy"].isna().all()
    assert len(summary) == len(table) == 6

    text = (tmp_path / "s.md").read_text()
    assert "0.993" in text and "0.417 (not reached)" in text and "23 (40)" in text
    assert "**miniresnet-seed0: target not reached.**" in text
    assert "not Adebayo et al.'s test" in text
    assert "cnn2-seed0: target not reached" not in text


def test_sanity_table_without_random_labels(tmp_path):
    part = tmp_path / "p.csv"
    table = per_image_table("cnn2-seed0")
    table[table["test"] != "random_labels"].to_csv(part, index=False)
    summary = combine_sanity_tables(
        parts=[part], out_csv=tmp_path / "s.csv", out_md=tmp_path / "s.md"
    )
    assert "copy_train_accuracy" not in summary
    assert "copy" not in (tmp_path / "s.md").read_text()
    assert np.isfinite(summary["spearman_abs_median"]).all()
