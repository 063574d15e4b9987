"""Primaries whose data seed or training length is not the default (the init_vs_data and
training_length studies): names, canonical identity, and what each seed controls."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import with_defaults

from saliency_fingerprints.configuration import (
    Primary,
    listed_primaries,
    make_primary,
    parse_tag,
    primary_tag,
)
from saliency_fingerprints.datasets import prepare_dataset
from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.primary import train_primary
from saliency_fingerprints.training import load_model

CPU = torch.device("cpu")


def test_tags_names_and_canonical_form():
    assert primary_tag() == "" and parse_tag("") == (None, None)
    assert primary_tag(3, 0) == "-data3-epoch0" and parse_tag("-data3-epoch0") == (3, 0)
    assert parse_tag("-epoch12") == (None, 12) and parse_tag("-data7") == (7, None)
    with pytest.raises(ConfigError, match="-data<seed>"):
        parse_tag("-epoch1-data2")
    # a data seed equal to the seed, or the default length, is the ordinary primary
    assert make_primary("cnn2", 2, 2, 15, default_epochs=15) == Primary("cnn2", 2)
    assert make_primary("cnn2", 2, 0, 3, default_epochs=15).name == "cnn2-seed2-data0-epoch3"
    assert Primary("cnn2", 2, 0).shifted(4) == Primary("cnn2", 6, 4)
    groups = [{"architecture": "cnn2", "seeds": [0, 0], "data_seeds": [0, 1], "epochs": 5}]
    assert [p.name for p in listed_primaries(groups, 5)] == ["cnn2-seed0", "cnn2-seed0-data1"]
    with pytest.raises(ConfigError, match=r"primaries\[0\]\.data_seeds: got 1 entries"):
        listed_primaries([{"architecture": "cnn2", "seeds": [0, 1], "data_seeds": [0]}])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Digits primaries: (seed, data_seed, epochs) -> (metrics, model)."""
    root = tmp_path_factory.mktemp("variants")
    dataset = root / "digits.zarr"
    prepare_dataset(
        cfg=with_defaults("dataset", name="digits", source="sklearn_digits"), out=dataset
    )
    out = {}
    for seed, data_seed, epochs in [
        (0, None, 0),
        (0, 1, 0),
        (0, None, 3),
        (0, None, 1),
        (1, None, 1),
        (0, 1, 1),
        (1, 0, 1),
    ]:
        cfg = with_defaults(
            "primary_training", train_fraction=0.5, epochs=epochs, batch_size=64, learning_rate=1e-3
        )
        name = Primary("cnn2", seed, data_seed, epochs).name
        metrics = train_primary(
            dataset_path=dataset,
            architecture="cnn2",
            seed=seed,
            data_seed=data_seed,
            name=name,
            cfg=cfg,
            weights_out=root / name / "model.safetensors",
            metrics_out=root / name / "metrics.json",
            device=CPU,
            threads=1,
        )
        assert json.loads((root / name / "metrics.json").read_text())["primary"] == name
        out[seed, data_seed, epochs] = (metrics, load_model(root / name / "model.safetensors", CPU))
    return out


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_untrained_primary_and_its_record(trained):
    metrics, model = trained[0, None, 0]
    assert metrics["epochs"] == 0 and len(metrics["history"]) == 1
    record = metrics["history"][0]
    assert record["epoch"] == 0 and 0 <= record["test_accuracy"] <= 1
    assert metrics["final_test_accuracy"] == record["test_accuracy"]
    # the seed alone sets the initial weights: another data seed, the same untrained model
    assert _same_weights(model, trained[0, 1, 0][1])


def test_a_shorter_run_is_the_longer_runs_checkpoint(trained):
    short, _ = trained[0, None, 1]
    long, _ = trained[0, None, 3]
    assert short["history"][0] == long["history"][0]
    assert long["final_test_accuracy"] > trained[0, None, 0][0]["final_test_accuracy"]


def test_the_data_seed_sets_the_subset_and_batch_order_the_seed_the_init(trained):
    # seed 0 on seed 1's data vs seed 1: same data, other init -> other weights, same n_train
    on_other_data, _ = trained[0, 1, 1]
    assert on_other_data["data_seed"] == 1 and on_other_data["seed"] == 0
    assert on_other_data["n_train"] == trained[1, None, 1][0]["n_train"]
    assert not _same_weights(trained[0, 1, 1][1], trained[1, None, 1][1])
    assert not _same_weights(trained[0, 1, 1][1], trained[0, None, 1][1])
    # the four (init, data) combinations of seeds 0 and 1 are four different models
    models = [trained[key][1] for key in [(0, None, 1), (1, None, 1), (0, 1, 1), (1, 0, 1)]]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not _same_weights(models[i], models[j])
