"""Studies (config key ``studies``): expansion into experiments, the secondary's fit_fraction,
and the study tables and figures from synthetic cross-evaluation CSVs (no training)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_default_config, planned_jobs, tiny_config
from snakemake.utils import validate

from saliency_fingerprints.configuration import (
    Primary,
    check_schema,
    expand_studies,
    experiment_primaries,
    study_experiments,
    study_level_name,
)
from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.secondary import fit_subset, validation_split
from saliency_fingerprints.studies import COLUMNS, write_study
from saliency_fingerprints.tables import REPLICATE_COLUMNS

SCHEMA = Path(__file__).parents[1] / "config/schema/config.schema.yaml"


def validated(cfg: dict) -> dict:
    """``cfg`` checked and filled with the schema's defaults, as rules/common.smk does."""
    cfg = copy.deepcopy(cfg)
    check_schema(cfg, SCHEMA)
    validate(cfg, str(SCHEMA))
    return cfg


def error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as info:
        expand_studies(validated(cfg))
    assert "\n" not in str(info.value)
    return str(info.value)


def schema_error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as info:
        check_schema(cfg, SCHEMA)
    return str(info.value)


def test_level_names():
    assert study_level_name("n_primaries", 4) == "study-n_primaries-4"
    assert study_level_name("learning_curve", 0.25) == "study-learning_curve-0p25"
    assert study_level_name("learning_curve", 1.0) == "study-learning_curve-1"


def test_default_studies_expand_into_experiments_that_reuse_primaries():
    cfg = validated(load_default_config())
    before = set(cfg["experiments"])
    plan = expand_studies(cfg)
    levels = {
        s: [(lvl["level"], lvl["experiment"]) for lvl in p["levels"]] for s, p in plan.items()
    }
    assert levels == {
        "n_primaries": [(2, "study-n_primaries-2"), (4, "study-n_primaries-4")],
        # fraction 1 with two_cnn2's primaries, replicates and secondary is two_cnn2 itself
        "learning_curve": [
            (0.25, "study-learning_curve-0p25"),
            (1.0, "two_cnn2"),
        ],
        # both: the ordinary seeds 0, 1 with n_primaries' settings, so its k = 2 level
        "init_vs_data": [
            ("init", "study-init_vs_data-init"),
            ("data", "study-init_vs_data-data"),
            ("both", "study-n_primaries-2"),
        ],
        # 15 epochs is primary_training.epochs: the ordinary primaries, so k = 2 again
        "training_length": [
            (0, "study-training_length-0"),
            (15, "study-n_primaries-2"),
        ],
    }
    added = set(cfg["experiments"]) - before
    assert (
        added
        == study_experiments(plan)
        == {
            "study-n_primaries-2",
            "study-n_primaries-4",
            "study-learning_curve-0p25",
            "study-init_vs_data-init",
            "study-init_vs_data-data",
            "study-training_length-0",
        }
    )
    # init: seed 1's weights on seed 0's data; data: seed 0's weights on seed 1's data
    assert [p.name for p in experiment_primaries(cfg, "study-init_vs_data-init")] == [
        "cnn2-seed0",
        "cnn2-seed1-data0",
    ]
    assert [p.name for p in experiment_primaries(cfg, "study-init_vs_data-data")] == [
        "cnn2-seed0",
        "cnn2-seed0-data1",
    ]
    assert [p.name for p in experiment_primaries(cfg, "study-training_length-0")] == [
        "cnn2-seed0-epoch0",
        "cnn2-seed1-epoch0",
    ]
    # the same (architecture, seed) as two_cnn2's primaries: the same primaries and map stores
    assert experiment_primaries(cfg, "study-n_primaries-4") == [
        Primary("cnn2", s) for s in range(4)
    ]
    two = {p for r in range(3) for p in experiment_primaries(cfg, "two_cnn2", r)}
    assert set(experiment_primaries(cfg, "study-n_primaries-4")) <= two
    # the learning curve keeps the base's primary sets per replicate, overrides fit_fraction only
    curve = cfg["experiments"]["study-learning_curve-0p25"]
    assert curve["secondary"] == {"fit_fraction": 0.25}
    for r in range(3):
        assert experiment_primaries(cfg, "study-learning_curve-0p25", r) == (
            experiment_primaries(cfg, "two_cnn2", r)
        )
    # generated experiments pass the experiments' schema; expanding again changes nothing
    again = validated(cfg)
    assert expand_studies(again) == plan and again["experiments"] == cfg["experiments"]


@pytest.mark.parametrize("off", [None, {"enabled": False}])
def test_absent_or_disabled_studies_add_nothing(off):
    cfg = load_default_config()
    if off is None:
        del cfg["studies"]
    else:
        cfg["studies"] = {"n_primaries": off, "learning_curve": off}  # nothing else required
    cfg = validated(cfg)
    names = set(cfg["experiments"])
    assert expand_studies(cfg) == {} and set(cfg["experiments"]) == names


@pytest.mark.parametrize(
    "edit,expected",
    [
        (
            lambda s: s["n_primaries"].update(counts=[1, 4]),
            "studies.n_primaries.counts[0]: got 1; expected a number >= 2",
        ),
        (
            lambda s: s["n_primaries"].pop("architecture"),
            "studies.n_primaries: missing required key 'architecture'",
        ),
        (
            lambda s: s["learning_curve"].update(fractions=[0.0, 0.5]),
            "studies.learning_curve.fractions[0]: got 0.0; expected a number > 0",
        ),
        (
            lambda s: s["learning_curve"].update(fractions=[0.5, 1.5]),
            "studies.learning_curve.fractions[1]: got 1.5; expected a number <= 1",
        ),
        (
            lambda s: s["init_vs_data"].update(seeds=[3]),
            "studies.init_vs_data.seeds: got 1 item(s); expected at least 2 item(s)",
        ),
        (
            lambda s: s["training_length"].update(epochs=[-1, 3]),
            "studies.training_length.epochs[0]: got -1; expected a number >= 0",
        ),
        (
            lambda s: s["training_length"].pop("epochs"),
            "studies.training_length: missing required key 'epochs'",
        ),
        (lambda s: s.update(depth={}), "studies.depth: unknown key"),
    ],
)
def test_schema_errors_name_the_study_key(edit, expected):
    cfg = load_default_config()
    edit(cfg["studies"])
    assert expected in schema_error(cfg)


def test_expansion_errors_name_the_study_key():
    cfg = load_default_config()
    cfg["studies"]["n_primaries"]["methods"] = ["grad", "gradd"]
    assert error(cfg).startswith("studies.n_primaries.methods[1]: got 'gradd'; expected one of")

    cfg = load_default_config()
    cfg["studies"]["learning_curve"]["experiment"] = "three_cnn2"
    assert error(cfg).startswith(
        "studies.learning_curve.experiment: got 'three_cnn2'; expected one of: two_cnn2"
    )

    cfg = load_default_config()  # a hand-written experiment under a generated name
    cfg["experiments"]["study-n_primaries-4"] = copy.deepcopy(cfg["experiments"]["two_cnn2"])
    assert error(cfg).startswith("studies.n_primaries: level 4 is experiment study-n_primaries-4")


def test_study_overrides_and_reuse_by_identity():
    cfg = load_default_config()
    # with two_cnn2's replicates (disjoint primary sets) and secondary, k = 2 *is* two_cnn2
    cfg["studies"]["n_primaries"]["replicates"] = {"disjoint_primaries": True}
    cfg["studies"]["n_primaries"].pop("secondary", None)
    cfg["studies"]["n_primaries"]["target"] = "predicted"
    cfg = validated(cfg)
    plan = expand_studies(cfg)
    assert [lvl["experiment"] for lvl in plan["n_primaries"]["levels"]] == [
        "two_cnn2",
        "study-n_primaries-4",
    ]
    # k = 4 on disjoint sets: {0-3}, {4-7}, {8-11}
    assert experiment_primaries(cfg, "study-n_primaries-4", 2) == [
        Primary("cnn2", s) for s in range(8, 12)
    ]
    # another secondary setting is another experiment, even with the same primaries
    cfg = load_default_config()
    cfg["studies"]["n_primaries"].update(replicates={"disjoint_primaries": True})
    cfg["studies"]["n_primaries"]["secondary"] = {"epochs": 3}
    plan = expand_studies(validated(cfg))
    assert plan["n_primaries"]["levels"][0]["experiment"] == "study-n_primaries-2"


def test_fit_subset_is_seeded_nested_and_leaves_validation_alone():
    train = np.arange(0, 400, 2)
    fit, val = validation_split(train, 0.2, seed=0)
    quarter, half = fit_subset(fit, 0.25, 0), fit_subset(fit, 0.5, 0)
    assert len(quarter) == round(len(fit) * 0.25) and len(half) == round(len(fit) * 0.5)
    assert np.all(np.diff(quarter) > 0)
    assert set(quarter) <= set(half) <= set(fit)  # nested: more data adds images
    assert np.array_equal(fit_subset(fit, 0.25, 0), quarter)  # seeded
    assert not np.array_equal(fit_subset(fit, 0.25, 1), quarter)
    assert np.array_equal(fit_subset(fit, 1.0, 0), fit)
    assert len(fit_subset(fit[:3], 0.01, 0)) == 1  # at least one image
    assert not set(half) & set(val)


def replicate_rows(experiment: str, k: int, methods: list[str], accuracies, cue: float):
    """Per-replicate cross-evaluation rows as cross_evaluate writes them (every train x test
    method, plus a shuffled variant that the study must ignore)."""
    rows = []
    for variant in ("original", "shuffled_per_map"):
        for r, accuracy in enumerate(accuracies):
            for train in methods:
                for test in methods:
                    own = train == test and variant == "original"
                    rows.append(
                        {
                            "experiment": experiment,
                            "variant": variant,
                            "replicate": r,
                            "seed": r,
                            "primaries": ",".join(f"cnn2-seed{s}" for s in range(k)),
                            "train_method": train,
                            "test_method": test,
                            "accuracy": accuracy if own else 0.01,
                            "n_test": 300,
                            "chance": 1 / k,
                            "n_primaries": k,
                            "class_cue": cue,
                            "only_secondary": 60,
                            "only_cue": 10,
                            "same_class_accuracy": accuracy,
                            "n_same_class": 250,
                            "same_class_fraction": 0.8,
                            "p_value": 1e-5,
                        }
                    )
    return pd.DataFrame(rows, columns=REPLICATE_COLUMNS)


def test_study_table_and_figure_from_cross_evaluation_csvs(tmp_path):
    parts = []
    for name, k, accuracies, cue in (
        ("study-n_primaries-2", 2, [0.8, 0.9, 0.85], 0.55),
        ("study-n_primaries-4", 4, [0.6, 0.7, 0.65], 0.3),
    ):
        path = tmp_path / "experiments" / name / "cross_evaluation" / "original.csv"
        path.parent.mkdir(parents=True)
        replicate_rows(name, k, ["grad", "smoothgrad"], accuracies, cue).to_csv(path, index=False)
        parts.append(path)
    names = [f"cnn2-seed{s}" for s in range(4)]
    levels = [
        {
            "level": 2,
            "experiment": "study-n_primaries-2",
            "methods": ["grad"],
            "primaries": names[:2],
        },
        {
            "level": 4,
            "experiment": "study-n_primaries-4",
            "methods": ["grad", "smoothgrad"],
            "primaries": names,
        },
    ]
    metrics = []
    for name, accuracy in zip(names, [0.9, 0.8, 0.7, 0.6], strict=True):
        metrics.append(tmp_path / "primaries" / name / "metrics.json")
        metrics[-1].parent.mkdir(parents=True)
        metrics[-1].write_text(json.dumps({"primary": name, "final_test_accuracy": accuracy}))
    out = tmp_path / "tables" / "studies"
    out.mkdir(parents=True)
    png = tmp_path / "figures" / "n_primaries.png"
    png.parent.mkdir()
    table = write_study(
        study="n_primaries",
        levels=levels,
        parts=parts,
        out_csv=out / "n_primaries.csv",
        out_md=out / "n_primaries.md",
        out_png=png,
        dpi=40,
        primary_metrics=metrics,
    )
    csv = pd.read_csv(out / "n_primaries.csv")
    # the primaries' test accuracy beside each level: mean and sd over its primaries
    assert csv["primary_test_accuracy"].tolist() == pytest.approx([0.85, 0.75, 0.75])
    assert csv.iloc[0]["primary_test_accuracy_sd"] == pytest.approx(0.0707107)
    assert list(csv.columns) == COLUMNS and len(csv) == len(table) == 3
    assert list(zip(csv["level"], csv["method"], strict=True)) == [
        (2, "grad"),
        (4, "grad"),
        (4, "smoothgrad"),
    ]
    first = csv.iloc[0]
    assert first["accuracy"] == pytest.approx(0.85) and first["accuracy_sd"] == pytest.approx(0.05)
    assert first["ci_low"] < 0.85 < first["ci_high"] and first["n_replicates"] == 3
    assert first["chance"] == 0.5 and first["accuracy_over_chance"] == pytest.approx(1.7)
    assert first["class_cue"] == pytest.approx(0.55) and bool(first["above_chance"])
    assert csv.iloc[1]["chance"] == 0.25 and csv.iloc[1]["accuracy_over_chance"] == pytest.approx(
        2.6
    )
    markdown = (out / "n_primaries.md").read_text()
    assert markdown.startswith("# Study: n_primaries") and "0.850 ± 0.050" in markdown
    assert "0.750 ± 0.129" in markdown  # the four primaries' test accuracy
    with pytest.raises(ValueError, match="no metrics.json of primaries"):
        write_study(
            study="n_primaries",
            levels=levels,
            parts=parts,
            out_csv=tmp_path / "y.csv",
            out_md=tmp_path / "y.md",
            primary_metrics=metrics[:3],
        )
    assert (out / "n_primaries.provenance.json").exists()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no original-map rows of methods"):
        write_study(
            study="n_primaries",
            levels=[{"level": 2, "experiment": "study-n_primaries-2", "methods": ["ig"]}],
            parts=parts[:1],
            out_csv=tmp_path / "x.csv",
            out_md=tmp_path / "x.md",
        )


def test_default_studies_plan_without_cluttering_table_1(tmp_path):
    """The default config's studies planned on the tiny config: their experiments' secondaries
    and cross-evaluations and one table job per study, but no heatmap or map grid of them and
    no part of them in tables/cross_evaluation.* (a dry run, a few seconds)."""
    without = planned_jobs(tmp_path / "a", tiny_config())
    cfg = tiny_config()
    cfg["studies"] = load_default_config()["studies"]
    with_studies = planned_jobs(tmp_path / "b", cfg)
    # n_primaries and learning_curve use two_cnn2's primaries and grad maps (nothing new);
    # init_vs_data adds 2 primaries (seed 1 on seed 0's data, the reverse), training_length 4
    # (seeds 0, 1 after 0 and 15 epochs: the tiny config trains 3, so 15 is not the plain
    # primaries here), each with its grad maps. Study experiments with one method each:
    # n_primaries 2 (k = 2 is also init_vs_data's "both"), learning_curve 1 (1.0 is two_cnn2),
    # init_vs_data 2, training_length 2.
    assert with_studies["train_primary"] == without["train_primary"] + 6
    assert with_studies["compute_saliency"] == without["compute_saliency"] + 6
    assert with_studies["train_secondary"] == without["train_secondary"] + 7
    assert with_studies["cross_evaluate"] == without["cross_evaluate"] + 7
    assert with_studies["study_table"] == 4
    for rule in ("plot_heatmap", "plot_map_grid", "combine_tables"):
        assert with_studies[rule] == without[rule]


def test_key_order_does_not_rename_a_shared_level():
    """init_vs_data's "both" level is n_primaries' k = 2 in the default config; which of the two
    names the shared experiment must not depend on the order of the config's study keys."""
    cfg = load_default_config()
    names = {}
    for order in (list(cfg["studies"]), list(reversed(cfg["studies"]))):
        reordered = copy.deepcopy(cfg)
        reordered["studies"] = {k: cfg["studies"][k] for k in order}
        plan = expand_studies(validated(reordered))
        names[tuple(order)] = sorted(
            (study, lvl["level"], lvl["experiment"])
            for study, block in plan.items()
            for lvl in block["levels"]
        )
    first, second = names.values()
    assert first == second
    assert ("init_vs_data", "both", "study-n_primaries-2") in first  # shared, named as before
