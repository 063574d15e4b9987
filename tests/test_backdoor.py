"""The backdoor experiment (saliency_fingerprints/backdoor.py, trigger.py, backdoor_tables.py,
rules/backdoor.smk): the trigger, BadNets poisoning, the backdoored primary, its input-agnostic
maps and the localisation table."""

from __future__ import annotations

import contextlib
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from conftest import (
    REPO,
    job_counts,
    load_default_config,
    run_workflow,
    tiny_config,
    with_defaults,
)
from snakemake.utils import validate

from saliency_fingerprints.backdoor import (
    attack_success_rate,
    backdoor_class_maps,
    poison,
    poison_positions,
    train_backdoor_primary,
)
from saliency_fingerprints.backdoor_tables import (
    SEED_COLUMNS,
    backdoor_table,
    localisation_scores,
    summarise_scores,
)
from saliency_fingerprints.configuration import (
    SCHEMA_PATH,
    backdoor_primaries,
    check_backdoor,
    check_schema,
    deep_merge,
    schema_defaults,
)
from saliency_fingerprints.datasets import prepare_dataset
from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.models import build_model
from saliency_fingerprints.plots import plot_backdoor
from saliency_fingerprints.primary import train_primary
from saliency_fingerprints.training import TrainSettings, accuracy, train_classifier
from saliency_fingerprints.trigger import Trigger, stamp

CPU = torch.device("cpu")
TRIGGER = {"size": 2, "position": "bottom_right", "pattern": "checkerboard"}
POISONING = {"target_class": 0, "poison_fraction": 0.1, "trigger": TRIGGER, "seed": 0}
# input-agnostic maps at a few iterations: the machinery, not the method's quality
TINY_IA = {"batch_size": 4, "iterations": 3, "refine_iterations": 2, "cycles": 1, "max_samples": 32}


# -- the trigger ---------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["bottom_right", "bottom_left", "top_right", "top_left"])
@pytest.mark.parametrize("pattern", ["checkerboard", "solid"])
def test_stamp_puts_the_pattern_in_the_patch_and_nowhere_else(position, pattern):
    trigger = Trigger(3, position, pattern, low=0.0, high=1.0)
    images = 0.2 + 0.6 * torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    original = images.clone()
    stamped = stamp(images, trigger)
    assert torch.equal(images, original), "stamping copies"
    rows = range(0, 3) if position.startswith("top") else range(5, 8)
    cols = range(0, 3) if position.endswith("left") else range(5, 8)
    inside = np.zeros((8, 8), dtype=bool)
    inside[np.ix_(list(rows), list(cols))] = True
    assert np.array_equal(trigger.mask(8, 8), inside)
    mask = torch.from_numpy(inside)
    assert torch.equal(stamped[:, :, ~mask], original[:, :, ~mask])
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            expected = 1.0 if pattern == "solid" or (i + j) % 2 == 0 else 0.0
            assert (stamped[:, :, r, c] == expected).all(), (r, c)
    # one image as (C, H, W), and numpy arrays, the same way
    assert torch.equal(stamp(original[0], trigger), stamped[0])
    assert np.array_equal(stamp(original.numpy(), trigger), stamped.numpy())


def test_the_checkerboard_uses_the_given_pixel_range():
    trigger = Trigger(2, "top_left", "checkerboard", low=-1.0, high=3.0)
    assert trigger.pattern_array.tolist() == [[3.0, -1.0], [-1.0, 3.0]]
    assert trigger.area_fraction(8, 8) == 4 / 64


def test_a_bad_trigger_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"backdoor\.trigger\.size: got 8; expected less"):
        Trigger(8, "bottom_right", "checkerboard").box(8, 8)
    with pytest.raises(ConfigError, match=r"backdoor\.trigger\.position: got 'middle'"):
        Trigger(2, "middle", "checkerboard")
    with pytest.raises(ConfigError, match=r"backdoor\.trigger\.pattern: got 'stripes'"):
        Trigger(2, "top_left", "stripes")


# -- poisoning -----------------------------------------------------------------------------------


def shuffled_labels(n: int, classes: int = 5) -> np.ndarray:
    return np.random.default_rng(1).permutation(np.arange(n) % classes)


@pytest.mark.parametrize("n,fraction,expected", [(100, 0.1, 10), (47, 0.1, 5), (30, 0.25, 8)])
def test_poisoning_relabels_exactly_round_fraction_n_images(n, fraction, expected):
    labels = torch.from_numpy(shuffled_labels(n))
    images = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    trigger = Trigger(2, "bottom_right", "checkerboard")
    new_images, new_labels, positions = poison(
        images, labels, fraction=fraction, target=2, trigger=trigger, seed=3
    )
    assert len(positions) == expected == round(fraction * n)
    changed = np.flatnonzero((new_labels != labels).numpy())
    assert changed.tolist() == positions.tolist(), "every poisoned image is relabelled"
    assert (new_labels[positions] == 2).all() and (labels[positions] != 2).all()
    untouched = np.setdiff1d(np.arange(n), positions)
    assert torch.equal(new_images[untouched], images[untouched])
    assert torch.equal(new_images[positions], stamp(images[positions], trigger))


def test_poisoning_is_deterministic_per_seed():
    labels = shuffled_labels(200)
    first = poison_positions(labels, 0.1, target=0, seed=7)
    assert np.array_equal(first, poison_positions(labels, 0.1, target=0, seed=7))
    assert not np.array_equal(first, poison_positions(labels, 0.1, target=0, seed=8))
    assert np.array_equal(first, np.sort(first)) and len(set(first)) == 20


def test_poisoning_that_cannot_be_done_says_why():
    with pytest.raises(ConfigError, match="rounds to no image"):
        poison_positions(shuffled_labels(4), 0.1, target=0, seed=0)
    with pytest.raises(ConfigError, match="only 2 are of a class other than the target"):
        poison_positions(np.array([0, 0, 0, 1, 1, 0]), 0.5, target=0, seed=0)


# -- the localisation score ----------------------------------------------------------------------


def test_localisation_score_of_uniform_and_concentrated_maps():
    trigger = Trigger(2, "bottom_right", "checkerboard")
    mask = trigger.mask(8, 8)
    uniform = np.full((1, 3, 8, 8), 0.5)
    inside = np.zeros((1, 3, 8, 8))
    inside[:, :, 6:, 6:] = np.array([1.0, -2.0, 0.5]).reshape(3, 1, 1)  # signs do not cancel
    outside = np.zeros((1, 1, 8, 8))
    outside[..., 0, 0] = 4.0
    half = np.zeros((1, 1, 8, 8))
    half[..., 7, 7] = half[..., 0, 0] = 1.0
    scores = localisation_scores(np.concatenate([uniform, inside, np.zeros((1, 3, 8, 8))]), mask)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(1 / trigger.area_fraction(8, 8)) == pytest.approx(16.0)
    assert np.isnan(scores[2]), "an all-zero map has no share"
    assert localisation_scores(outside, mask)[0] == 0.0
    assert localisation_scores(half, mask)[0] == pytest.approx(8.0)
    # any leading shape: (class, draw, C, H, W)
    assert localisation_scores(np.ones((2, 3, 1, 8, 8)), mask).shape == (2, 3)


# -- a backdoor that works -----------------------------------------------------------------------


def bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 8x8 images: noise and a bright bar at a class's own rows (left of the
    bottom-right corner, where the trigger goes)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = 0.3 * torch.rand(n, 1, 8, 8, generator=generator)
    for k in range(3):
        images[labels == k, 0, 1 + 2 * k : 3 + 2 * k, 1:6] = 0.9
    return images, labels


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_a_tiny_backdoored_model_learns_the_trigger_and_a_clean_one_does_not():
    trigger = Trigger(2, "bottom_right", "checkerboard")
    (images, labels), (test_images, test_labels) = bars(300, 0), bars(90, 1)
    poisoned = poison(images, labels, fraction=0.1, target=0, trigger=trigger, seed=0)[:2]
    settings = TrainSettings(epochs=10, batch_size=32, learning_rate=0.01)
    rates = {}
    for name, data in (("backdoored", poisoned), ("clean", (images, labels))):
        torch.manual_seed(0)
        model = build_model("cnn2", 1, 8, 3)
        with one_thread():  # tiny batches: threads only contend (seconds, not minutes)
            train_classifier(model, data, None, settings, 0)
        assert accuracy(model, test_images, test_labels) > 0.9, name
        rates[name], n = attack_success_rate(model, test_images, test_labels, 0, trigger)
        assert n == 60  # the test images of classes 1 and 2
    assert rates["backdoored"] > 0.9 and rates["clean"] < 0.2, rates


# -- the jobs on a tiny digits store -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "digits.zarr"
    cfg = {"name": "digits", "source": "sklearn_digits", "max_train_images": 200}
    prepare_dataset(cfg=with_defaults("dataset", cfg, max_test_images=60), out=out)
    return out


TRAINING = dict(train_fraction=0.5, epochs=4, batch_size=16, learning_rate=0.01)


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory):
    """The clean primary cnn2-seed0 and its backdoored copy (tiny: 100 training images)."""
    out = tmp_path_factory.mktemp("primaries")
    cfg = with_defaults("primary_training", **TRAINING)
    common = dict(dataset_path=tiny_store, architecture="cnn2", seed=0, cfg=cfg, device=CPU)
    train_primary(
        **common, weights_out=out / "clean.safetensors", metrics_out=out / "clean.json", threads=1
    )
    metrics = train_backdoor_primary(
        **common,
        clean_weights=out / "clean.safetensors",
        backdoor=POISONING,
        weights_out=out / "backdoored.safetensors",
        metrics_out=out / "backdoored.json",
        threads=1,
    )
    return out, metrics


def test_backdoored_primary_records_its_poisoning_and_attack(trained):
    out, metrics = trained
    written = json.loads((out / "backdoored.json").read_text())
    assert written == json.loads(json.dumps(metrics, default=str))
    assert metrics["primary"] == "cnn2-seed0-backdoor" and metrics["n_train"] == 100
    assert metrics["backdoor"]["n_poisoned"] == 10
    assert metrics["labels"].startswith("poisoned: 10 of 100 training images")
    assert metrics["backdoor"]["trigger"] == {**TRIGGER, "low": 0.0, "high": 1.0}
    assert metrics["provenance"]["config"]["backdoor"] == POISONING
    clean = json.loads((out / "clean.json").read_text())
    assert metrics["clean_primary"]["primary"] == "cnn2-seed0"
    assert metrics["clean_primary"]["test_accuracy"] == pytest.approx(clean["final_test_accuracy"])
    assert metrics["clean_test_accuracy"] == pytest.approx(metrics["final_test_accuracy"])
    assert metrics["n_attack_images"] == 60 - clean["test_label_counts"]["0"]
    for rate in (metrics["attack_success_rate"], metrics["clean_primary"]["attack_success_rate"]):
        assert 0 <= rate <= 1
    assert (out / "backdoored.safetensors").read_bytes() != (out / "clean.safetensors").read_bytes()


def test_the_training_hook_changes_nothing_when_it_changes_nothing(tiny_store, trained, tmp_path):
    """An identity transform gives the clean primary's weights byte for byte: the hook leaves
    the ordinary primaries (and their batch order) as they were."""
    out, _ = trained
    train_primary(
        dataset_path=tiny_store,
        architecture="cnn2",
        seed=0,
        cfg=with_defaults("primary_training", **TRAINING),
        weights_out=tmp_path / "model.safetensors",
        metrics_out=tmp_path / "metrics.json",
        device=CPU,
        threads=1,
        training_transform=lambda images, labels: (images, labels),
    )
    assert (tmp_path / "model.safetensors").read_bytes() == (out / "clean.safetensors").read_bytes()


def test_a_target_class_the_dataset_lacks_is_refused(tiny_store, trained, tmp_path):
    out, _ = trained
    with pytest.raises(ConfigError, match=r"backdoor\.target_class: got 10; the dataset has 10"):
        train_backdoor_primary(
            dataset_path=tiny_store,
            clean_weights=out / "clean.safetensors",
            architecture="cnn2",
            seed=0,
            cfg=with_defaults("primary_training", **TRAINING),
            backdoor={**POISONING, "target_class": 10},
            weights_out=tmp_path / "w.safetensors",
            metrics_out=tmp_path / "m.json",
            device=CPU,
        )


@pytest.fixture(scope="module")
def map_stores(tiny_store, trained, tmp_path_factory):
    out, _ = trained
    maps = tmp_path_factory.mktemp("maps")
    method = {**schema_defaults("properties", "methods", "properties", "input_agnostic"), **TINY_IA}
    for kind in ("clean", "backdoored"):
        backdoor_class_maps(
            dataset_path=tiny_store,
            weights_path=out / f"{kind}.safetensors",
            maps_out=maps / f"{kind}.zarr",
            method_params=method,
            saliency_cfg={"pass_size": 64, "tf32": False},
            n_maps=2,
            architecture="cnn2",
            seed=0,
            kind=kind,
            device=CPU,
            threads=1,
        )
    return maps, method


def test_map_store_holds_every_class_and_draw(tiny_store, map_stores, trained, tmp_path):
    maps, method = map_stores
    ds = xr.open_zarr(maps / "backdoored.zarr", consolidated=False)
    assert ds["maps"].dims == ("class", "draw", "channel", "y", "x")
    assert ds["maps"].shape == (10, 2, 1, 8, 8)
    assert ds.attrs["primary"] == "cnn2-seed0" and ds.attrs["kind"] == "backdoored"
    for name in ("ia_success", "ia_probability", "ia_norm"):
        assert ds[name].dims == ("class", "draw") and np.isfinite(ds[name].values).all()
    assert np.isfinite(ds["maps"].values).all() and np.abs(ds["maps"].values).sum() > 0
    # a map is a function of the model, the settings and its (class, draw) key: another pass
    # size groups the maps differently and gives the same maps
    out, _ = trained
    again = backdoor_class_maps(
        dataset_path=tiny_store,
        weights_path=out / "backdoored.safetensors",
        maps_out=tmp_path / "again.zarr",
        method_params=method,
        saliency_cfg={"pass_size": 16, "tf32": False},
        n_maps=2,
        architecture="cnn2",
        seed=0,
        kind="backdoored",
        device=CPU,
        threads=1,
    )
    assert np.allclose(again["maps"].values, ds["maps"].values, atol=1e-6)
    clean = xr.open_zarr(maps / "clean.zarr", consolidated=False)
    assert not np.allclose(clean["maps"].values, ds["maps"].values)


def test_table_and_figure_from_the_stores(tiny_store, map_stores, trained, tmp_path):
    maps, _ = map_stores
    out, metrics = trained
    stores = [maps / "clean.zarr", maps / "backdoored.zarr"]
    table = backdoor_table(
        stores=stores,
        metrics=[out / "backdoored.json"],
        trigger_cfg=TRIGGER,
        target_class=0,
        poison_fraction=0.1,
        out_csv=tmp_path / "backdoor.csv",
        out_md=tmp_path / "backdoor.md",
    )
    written = pd.read_csv(tmp_path / "backdoor.csv")
    assert list(written.columns) == SEED_COLUMNS and len(written) == len(table) == 40
    seeds = written[written.level == "seed"]
    assert len(seeds) == 20 and (seeds.n_maps == 2).all() and seeds.is_target.sum() == 2
    hit = seeds[(seeds.kind == "backdoored") & seeds.is_target].iloc[0]
    assert hit.attack_success_rate == pytest.approx(metrics["attack_success_rate"], abs=1e-6)
    assert 1 <= hit.target_rank <= 10
    clean = seeds[seeds.kind == "clean"]
    assert clean.attack_success_rate.iloc[0] == pytest.approx(
        metrics["clean_primary"]["attack_success_rate"], abs=1e-6
    )
    assert clean.p_vs_clean.isna().all() and clean.target_rank.isna().all()
    across = written[written.level == "across_seeds"]
    assert (across.n_seeds == 1).all() and across.localisation_sd.isna().all()
    assert np.allclose(across.localisation_mean.to_numpy(), seeds.localisation_mean.to_numpy())
    markdown = (tmp_path / "backdoor.md").read_text()
    assert "## Headline" in markdown and "cnn2-seed0" in markdown and "16.0" in markdown
    assert (tmp_path / "backdoor.provenance.json").exists()
    plot_backdoor(
        stores=stores,
        dataset=tiny_store,
        metrics=[out / "backdoored.json"],
        trigger_cfg=TRIGGER,
        target_class=0,
        out=tmp_path / "backdoor.png",
        dpi=40,
    )
    assert (tmp_path / "backdoor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_table_with_another_trigger_than_the_training_is_refused(map_stores, trained, tmp_path):
    maps, _ = map_stores
    out, _ = trained
    with pytest.raises(Exception, match="another trigger"):
        backdoor_table(
            stores=[maps / "clean.zarr", maps / "backdoored.zarr"],
            metrics=[out / "backdoored.json"],
            trigger_cfg={**TRIGGER, "size": 3},
            target_class=0,
            poison_fraction=0.1,
            out_csv=tmp_path / "x.csv",
            out_md=tmp_path / "x.md",
        )


def scores_frame() -> pd.DataFrame:
    """Per-map scores of two seeds, two kinds, three classes (target 0), three draws each: the
    backdoored target class high, everything else near 1."""
    rows = []
    values = {
        ("backdoored", 0): [5.0, 6.0, 7.0],
        ("backdoored", 1): [1.0, 1.2, 0.8],
        ("backdoored", 2): [2.0, 2.5, 1.5],
        ("clean", 0): [1.0, 1.1, 0.9],
        ("clean", 1): [1.0, 1.0, 1.0],
        ("clean", 2): [0.5, 0.7, 0.6],
    }
    for seed, shift in ((0, 0.0), (1, 1.0)):
        for (kind, label), draws in values.items():
            for draw, value in enumerate(draws):
                rows.append(
                    {
                        "architecture": "cnn2",
                        "seed": seed,
                        "primary": f"cnn2-seed{seed}",
                        "kind": kind,
                        "class": label,
                        "class_name": str(label),
                        "draw": draw,
                        "localisation": value
                        + (shift if (kind, label) == ("backdoored", 0) else 0),
                        "ia_success": 0.5,
                    }
                )
    return pd.DataFrame(rows)


METRICS = {
    f"cnn2-seed{s}": {
        "clean_test_accuracy": 0.9 - s / 10,
        "attack_success_rate": 0.95,
        "clean_primary": {
            "primary": f"cnn2-seed{s}",
            "test_accuracy": 0.92,
            "attack_success_rate": 0.01,
        },
    }
    for s in (0, 1)
}


def test_summary_per_seed_and_across_seeds():
    table = summarise_scores(scores_frame(), 0, METRICS)
    assert list(table.columns) == SEED_COLUMNS and len(table) == 2 * 6 + 6
    seeds = table[table.level == "seed"].set_index(["seed", "kind", "class"])
    hit = seeds.loc[(0, "backdoored", 0)]
    assert hit.localisation_mean == pytest.approx(6.0) and hit.localisation_sd == pytest.approx(1.0)
    assert (hit.localisation_min, hit.localisation_max, hit.n_maps) == (5.0, 7.0, 3)
    assert hit.target_rank == 1 and hit.is_target
    assert hit.test_accuracy == pytest.approx(0.9) and hit.attack_success_rate == 0.95
    # every backdoored target draw above every clean target draw: the exact one-sided p of 3 vs
    # 3 is 1 / C(6, 3) = 0.05; against the 6 draws of the other classes 1 / C(9, 3)
    assert hit.p_vs_clean == pytest.approx(1 / 20)
    assert hit.p_vs_other_classes == pytest.approx(1 / 84)
    assert seeds.loc[(0, "clean", 0)].test_accuracy == 0.92
    assert seeds.loc[(1, "clean", 0)].attack_success_rate == 0.01
    assert pd.isna(seeds.loc[(0, "clean", 0)].target_rank)
    across = table[table.level == "across_seeds"].set_index(["kind", "class"])
    row = across.loc[("backdoored", 0)]
    assert row.primary == "cnn2 (2 seeds)" and row.n_seeds == 2 and row.n_maps == 6
    assert row.localisation_mean == pytest.approx(6.5)  # seed means 6 and 7
    assert row.localisation_sd == pytest.approx(np.std([6.0, 7.0], ddof=1))
    assert row.test_accuracy == pytest.approx(0.85)
    assert across.loc[("clean", 1)].localisation_sd == pytest.approx(0.0)


def test_a_target_class_that_does_not_stand_out_ranks_low():
    scores = scores_frame()
    scores.loc[(scores.kind == "backdoored") & (scores["class"] == 0), "localisation"] = 1.0
    table = summarise_scores(scores, 0, METRICS)
    hit = table[(table.level == "seed") & (table.kind == "backdoored") & table.is_target]
    assert (hit.target_rank == 2).all()  # class 2 (mean 2.0) is higher
    assert (hit.p_vs_clean > 0.3).all() and (hit.p_vs_other_classes > 0.3).all()


# -- the config ----------------------------------------------------------------------------------


def with_backdoor(**keys) -> dict:
    cfg = tiny_config(sanity=False)
    cfg["backdoor"] = {"primaries": [{"architecture": "cnn2", "seeds": [0]}], **keys}
    return cfg


def schema_error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as info:
        check_schema(cfg, SCHEMA_PATH)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    "keys,expected",
    [
        ({"poison_fraction": 0}, "backdoor.poison_fraction: got 0; expected a number > 0"),
        ({"poison_fraction": 1.5}, "backdoor.poison_fraction: got 1.5; expected a number < 1"),
        ({"target_class": -1}, "backdoor.target_class: got -1; expected a number >= 0"),
        ({"n_maps": 0}, "backdoor.n_maps: got 0; expected a number >= 1"),
        ({"trigger": {"size": 0}}, "backdoor.trigger.size: got 0; expected a number >= 1"),
        (
            {"trigger": {"position": "middle"}},
            "backdoor.trigger.position: got 'middle'; expected one of: bottom_right",
        ),
        (
            {"trigger": {"pattern": "noise"}},
            "backdoor.trigger.pattern: got 'noise'; expected one of: checkerboard, solid",
        ),
        ({"trigger": {"colour": "red"}}, "backdoor.trigger.colour: unknown key"),
        ({"input_agnostic": {}}, "backdoor.input_agnostic: unknown key"),
        ({"primaries": []}, "backdoor.primaries: got 0 item(s); expected at least 1 item(s)"),
        (
            {"primaries": [{"architecture": "cnn2", "seeds": [0, 0]}]},
            "backdoor.primaries[0].seeds: 0 listed more than once",
        ),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(keys, expected):
    assert expected in schema_error(with_backdoor(**keys))


def test_schema_requires_primaries_only_when_enabled():
    cfg = tiny_config(sanity=False)
    cfg["backdoor"] = {"target_class": 1}
    assert "backdoor: missing required key 'primaries'" in schema_error(cfg)
    cfg["backdoor"] = {"enabled": False}
    check_schema(cfg, SCHEMA_PATH)
    assert backdoor_primaries(cfg) == []


def test_schema_fills_in_the_defaults():
    cfg = with_backdoor()
    validate(cfg, str(SCHEMA_PATH))
    block = cfg["backdoor"]
    assert block["enabled"] is True and block["n_maps"] >= 1 and 0 < block["poison_fraction"] < 1
    assert set(block["trigger"]) == {"size", "position", "pattern"}
    assert [p.name for p in backdoor_primaries(cfg)] == ["cnn2-seed0"]


def test_the_digits_overlay_turns_it_on_over_the_default_config():
    """The default run leaves it out (its cost, README); config/overlays/backdoor.yaml adds it."""
    default = load_default_config()
    assert backdoor_primaries(default) == []
    overlay = yaml.safe_load((REPO / "config/overlays/backdoor.yaml").read_text())
    cfg = deep_merge(default, overlay)
    check_schema(cfg, SCHEMA_PATH)
    validate(cfg, str(SCHEMA_PATH))
    assert [p.name for p in backdoor_primaries(cfg)] == ["cnn2-seed0", "cnn2-seed1"]
    assert cfg["backdoor"]["trigger"]["size"] < 8


def test_a_primary_listed_twice_is_refused():
    cfg = with_backdoor()
    cfg["backdoor"]["primaries"].append({"architecture": "cnn2", "seeds": [0]})
    with pytest.raises(ConfigError, match=r"backdoor\.primaries: cnn2-seed0 listed more than once"):
        check_backdoor(cfg)


# -- the workflow --------------------------------------------------------------------------------


def workflow_config() -> dict:
    cfg = with_backdoor(n_maps=2, trigger=dict(TRIGGER))
    cfg["methods"]["input_agnostic"] = dict(TINY_IA)
    cfg["dataset"].update(max_train_images=300, max_test_images=100)
    cfg["plots"].update(dpi=40)
    return cfg


TARGETS = ("results/tables/backdoor.csv", "results/figures/backdoor.png")


def test_the_backdoor_jobs_are_planned_only_while_enabled(tmp_path):
    """The whole DAG (dry runs in fresh directories): the backdoor jobs are final outputs while
    the block is enabled, and nothing else changes."""
    cfg = workflow_config()
    on = job_counts(run_workflow(tmp_path / "on", cfg, "-n", "-q", "rules"))
    cfg["backdoor"]["enabled"] = False
    off = job_counts(run_workflow(tmp_path / "off", cfg, "-n", "-q", "rules"))
    added = {rule: n for rule, n in on.items() if off.get(rule) != n}
    assert added == {
        "train_backdoor_primary": 1,
        "backdoor_maps": 2,
        "backdoor_table": 1,
        "plot_backdoor": 1,
    }


@pytest.mark.slow  # ~1 min on 2 cores: a real run of the 7 jobs, then 5 dry runs
def test_workflow_runs_and_reruns_only_what_an_edit_changes(tmp_path):
    """The backdoor outputs of a tiny config (7 jobs), then dry runs of config edits: each plans
    exactly the jobs whose result it can change."""
    cfg = workflow_config()
    run_workflow(tmp_path, cfg, *TARGETS)
    table = pd.read_csv(tmp_path / "results/tables/backdoor.csv")
    assert set(table.kind) == {"clean", "backdoored"} and table.n_maps.min() == 2
    for kind in ("clean", "backdoored"):
        assert (tmp_path / f"results/backdoor/maps/{kind}/cnn2-seed0.zarr/zarr.json").exists()
    metrics = tmp_path / "results/backdoor/primaries/cnn2-seed0-backdoor/metrics.json"
    assert json.loads(metrics.read_text())["backdoor"]["n_poisoned"] > 0

    def plan(edit) -> dict[str, int]:
        edited = copy.deepcopy(cfg)
        edit(edited)
        return job_counts(run_workflow(tmp_path, edited, *TARGETS, "-n", "-q", "rules"))

    assert plan(lambda c: None) == {}
    # the same config with its keys sorted: the params are canonical, nothing reruns
    (tmp_path / "sorted.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
    sorted_plan = run_workflow(
        tmp_path, None, *TARGETS, "--configfile", str(tmp_path / "sorted.yaml"), "-n", "-q", "rules"
    )
    assert job_counts(sorted_plan) == {}
    after_training = {"backdoor_maps": 1, "backdoor_table": 1, "plot_backdoor": 1}
    assert plan(lambda c: c["backdoor"]["trigger"].update(size=3)) == {
        "train_backdoor_primary": 1,
        **after_training,  # the backdoored copy's maps only: the clean primary's stay
    }
    maps_on = {"backdoor_maps": 2, "backdoor_table": 1, "plot_backdoor": 1}  # both kinds
    assert plan(lambda c: c["backdoor"].update(n_maps=3)) == maps_on
    # the maps' settings are methods.input_agnostic's
    assert plan(lambda c: c["methods"]["input_agnostic"].update(iterations=4)) == maps_on
