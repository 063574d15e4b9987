"""Unit tests of the config checks behind rules/common.smk (no workflow run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from saliency_fingerprints.configuration import (
    SCHEMA_PATH,
    Primary,
    check_dataset_files,
    check_experiments,
    check_results_writable,
    check_schema,
    deep_merge,
    experiment_primaries,
    experiment_secondary,
    key_path,
    local_source,
    random_label_epochs,
    schema_defaults,
    validate_config,
)
from saliency_fingerprints.errors import ConfigError

SCHEMA = Path(__file__).parents[1] / "config/schema/config.schema.yaml"


def schema_error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as info:
        check_schema(cfg, SCHEMA)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_key_path():
    assert key_path([]) == "(top level)"
    assert key_path(["experiments", "a", "primaries", 0, "seeds"]) == (
        "experiments.a.primaries[0].seeds"
    )


def test_shipped_configs_pass_the_schema():
    for path in sorted((SCHEMA.parents[1]).glob("*.yaml")):
        check_schema(yaml.safe_load(path.read_text()), SCHEMA)


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda c: c["secondary"].update(epochz=3), "secondary.epochz: unknown key; expected one"),
        (lambda c: c.update(extra=1), "extra: unknown key"),
        (
            lambda c: c["saliency"].update(target="random"),
            "saliency.target: got 'random'; expected one of:",
        ),
        (
            lambda c: c["methods"]["smoothgrad"].update(n_samples=0),
            "methods.smoothgrad.n_samples: got 0; expected a number >= 1",
        ),
        (
            lambda c: c["secondary"].update(epochs="ten"),
            "secondary.epochs: got 'ten'; expected type integer",
        ),
        (lambda c: c.pop("dataset"), "(top level): missing required key 'dataset'"),
        (
            lambda c: c["sanity_checks"]["primaries"][0].update(seeds=[1, 1]),
            "sanity_checks.primaries[0].seeds: 1 listed more than once",
        ),
    ],
    ids=["nested-key", "top-key", "enum", "minimum", "type", "required", "unique"],
)
def test_schema_errors_name_the_key_and_the_expectation(edit, expected):
    cfg = tiny_config()
    edit(cfg)
    assert expected in schema_error(cfg)


TRAINING_CHECKS = [
    ("epochs", 0, "got 0; expected a number >= 1"),
    ("batch_size", 0, "got 0; expected a number >= 1"),
    ("weight_decay", -1, "got -1; expected a number >= 0"),
    ("optimizer", "rmsprop", "got 'rmsprop'; expected one of: adam, sgd"),
    ("autocast", "fp8", "got 'fp8'; expected one of: none, bf16"),
    ("engine", "turbo", "got 'turbo'; expected one of: auto, plain, stacked"),
]

SECONDARY_CHECKS = [
    ("test_fraction", 1.0, "got 1.0; expected a number < 1"),
    ("validation_fraction", 0.0, "got 0.0; expected a number > 0"),
    ("fit_fraction", 0, "got 0; expected a number > 0"),
    ("fit_fraction", 1.5, "got 1.5; expected a number <= 1"),
    ("patience", 0, "got 0; expected a number >= 1"),
]


@pytest.mark.parametrize(
    "where,key,value,expected",
    [
        *[("primary_training", *case) for case in TRAINING_CHECKS],
        *[("secondary", *case) for case in TRAINING_CHECKS],
        *[("experiments.two_cnn2.secondary", *case) for case in TRAINING_CHECKS],
        *[
            (where, *case)
            for where in ("secondary", "experiments.two_cnn2.secondary")
            for case in SECONDARY_CHECKS
        ],
        ("secondary.preprocess", "clip_percentile", 0, "got 0; expected a number > 0"),
        ("secondary.preprocess", "clip_percentile", 101, "got 101; expected a number <= 100"),
        ("primary_training", "train_fraction", 0, "got 0; expected a number > 0"),
        ("primary_training", "train_fraction", 1.5, "got 1.5; expected a number <= 1"),
        ("sanity_checks.random_labels", "target_train_accuracy", 0, "got 0; expected a number > 0"),
        (
            "sanity_checks.random_labels",
            "target_train_accuracy",
            1.5,
            "got 1.5; expected a number <= 1",
        ),
        ("sanity_checks.smooth_randomisation", "n_samples", 0, "got 0; expected a number >= 1"),
        (
            "sanity_checks.smooth_randomisation",
            "noise_level",
            -0.1,
            "got -0.1; expected a number >= 0",
        ),
        ("sanity_checks.efficient_randomisation", "bins", 1, "got 1; expected a number >= 2"),
        ("saliency", "pass_size", 0, "got 0; expected a number >= 1"),
        ("saliency", "pass_size", "big", "got 'big'; expected type integer or 'auto'"),
        ("replicates", "n", 0, "got 0; expected a number >= 1"),
        ("saliency", "images", "val", "got 'val'; expected one of: all, train, test"),
        ("saliency", "max_images", 0, "got 0; expected a number >= 1"),
        ("saliency", "seed", -1, "got -1; expected a number >= 0"),
        ("saliency", "target", "random", "got 'random'; expected one of: predicted, true"),
        ("saliency", "chunk_size", 0, "got 0; expected a number >= 1"),
        ("saliency", "dtype", "float64", "got 'float64'; expected one of: float32, float16"),
        ("saliency", "tf32", "yes", "got 'yes'; expected type boolean"),
    ],
)
def test_the_schema_alone_checks_single_values(where, key, value, expected):
    """Training settings, the primaries' training subsets, the secondaries' splits and
    preprocessing, the random-label copies, the saliency job, the replicates and the dataset
    loaders (tests/test_datasets.py) read the validated config as it is: each of these values is
    checked by the schema, with one line naming the key (per-experiment secondary overrides
    included)."""
    cfg = tiny_config()
    block = cfg
    for part in where.split("."):
        block = block.setdefault(part, {})
    block[key] = value
    assert schema_error(cfg) == f"{where}.{key}: {expected}"


def test_schema_defaults():
    assert schema_defaults("$defs", "train_defaults") == {
        "weight_decay": 0.0,
        "optimizer": "adam",
        "channels_last": False,
        "tf32": False,
        "autocast": "none",
        "engine": "auto",
    }
    # through allOf/$ref: the global secondary block's own defaults and the training ones
    secondary = schema_defaults("properties", "secondary")
    assert secondary == {
        **schema_defaults("$defs", "train_defaults"),
        "validation_fraction": 0.2,
        "patience": None,
        "fit_fraction": 1.0,
        "shuffle_seed": 0,
        "preprocess": {},  # validation then fills its keys: reduce abs_sum, clip_percentile 99
    }
    assert schema_defaults("properties", "primary_training") == schema_defaults(
        "$defs", "train_defaults"
    )
    assert schema_defaults("$defs", "secondary") == {}  # overrides get no defaults
    assert schema_defaults("properties", "saliency") == {
        "max_images": None,
        "seed": 0,
        "tf32": False,
        "dtype": "float32",
    }
    dataset = schema_defaults("properties", "dataset")
    assert dataset["test_fraction"] == 0.2 and dataset["split_seed"] == 0
    assert "name" not in dataset and "source" not in dataset  # required, no default
    assert schema_defaults("properties", "methods", "properties", "smoothgrad")["n_samples"] == 25
    dataset["split_seed"] = 7  # a copy: the next caller sees the schema's value
    assert schema_defaults("properties", "dataset")["split_seed"] == 0
    assert SCHEMA_PATH.is_file() and SCHEMA_PATH == SCHEMA.resolve()


def test_validation_fills_the_schema_defaults_of_the_global_blocks_only():
    """Validation fills the training defaults into primary_training and the global secondary
    block, not into an experiment's or a study's secondary overrides (filled there, they would
    override the global block they are merged over)."""
    cfg = tiny_config()
    cfg["experiments"]["two_cnn2"]["secondary"] = {"epochs": 5}
    cfg["studies"] = {
        "n_primaries": {"architecture": "cnn2", "counts": [2], "secondary": {"epochs": 7}}
    }
    training = schema_defaults("$defs", "train_defaults")
    for block in ("primary_training", "secondary"):
        for key in training:
            cfg[block].pop(key, None)
    validate_config(cfg)
    for block in ("primary_training", "secondary"):
        assert {key: cfg[block][key] for key in training} == training
    assert cfg["experiments"]["two_cnn2"]["secondary"] == {"epochs": 5}
    assert cfg["studies"]["n_primaries"]["secondary"] == {"epochs": 7}
    dataset = schema_defaults("properties", "dataset")
    assert {key: cfg["dataset"][key] for key in dataset} == dataset  # digits: none set
    assert (cfg["saliency"]["dtype"], cfg["saliency"]["tf32"]) == ("float32", False)


def test_validation_fills_the_smooth_and_efficient_randomisation_blocks():
    """sMPRT and eMPRT are on by default, with their settings from the schema alone (the job
    reads them as cfg[key])."""
    cfg = tiny_config()
    cfg["sanity_checks"].pop("smooth_randomisation", None)
    cfg["sanity_checks"]["efficient_randomisation"] = {"bins": 20}
    validate_config(cfg)
    assert cfg["sanity_checks"]["smooth_randomisation"] == {
        "enabled": True,
        "n_samples": 10,
        "noise_level": 0.1,
    }
    assert cfg["sanity_checks"]["efficient_randomisation"] == {"enabled": True, "bins": 20}
    sanity = ("properties", "sanity_checks", "properties")
    assert schema_defaults(*sanity, "efficient_randomisation") == {"enabled": True, "bins": 100}


def shipped_configs() -> dict[str, dict]:
    """Every config file shipped, the overlays over the config they are for (a preset's,
    ``<preset>-*.yaml``, over that preset; the others over the default config), and the tests'
    tiny config with the overrides of the two tests above."""
    configs = {p.name: yaml.safe_load(p.read_text()) for p in SCHEMA.parents[1].glob("*.yaml")}
    presets = [name for name in configs if name != "config.yaml"]
    for path in sorted((SCHEMA.parents[1] / "overlays").glob("*.yaml")):
        base = next(
            (p for p in presets if path.name.startswith(p.removesuffix(".yaml") + "-")),
            "config.yaml",
        )
        configs[f"{base} + {path.name}"] = deep_merge(
            configs[base], yaml.safe_load(path.read_text())
        )
    tiny = tiny_config()
    tiny["experiments"]["two_cnn2"]["secondary"] = {"epochs": 5}
    tiny["studies"] = {"n_primaries": {"architecture": "cnn2", "counts": [2], "secondary": {}}}
    for block in ("primary_training", "secondary"):
        tiny[block].pop("lr", None)
    tiny["sanity_checks"].pop("smooth_randomisation", None)
    configs["tiny"] = tiny
    return configs


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_validate_config_fills_in_what_snakemakes_validate_does(name):
    """rules/common.smk validates with validate_config (the schema parsed once, by libyaml):
    the config it leaves is the one ``snakemake.utils.validate`` leaves, and it does not change
    the schema's defaults through the configs it filled."""
    from snakemake.utils import validate

    ours, theirs = shipped_configs()[name], shipped_configs()[name]
    validate_config(ours)
    validate(theirs, str(SCHEMA))
    assert ours == theirs
    ours["dataset"]["split_seed"] += 1  # a filled default: the next config gets the schema's
    again = shipped_configs()[name]
    validate_config(again)
    assert again == theirs


def test_validate_config_reports_one_line():
    cfg = tiny_config()
    cfg["secondary"]["epochs"] = 0
    with pytest.raises(ConfigError, match=r"^secondary\.epochs: got 0; expected a number >= 1$"):
        validate_config(cfg)


def test_deep_merge_leaves_its_inputs_alone():
    base = {"a": {"b": 1, "c": [1]}, "d": 2}
    over = {"a": {"b": 3}, "e": {"f": 4}}
    merged = deep_merge(base, over)
    assert merged == {"a": {"b": 3, "c": [1]}, "d": 2, "e": {"f": 4}}
    merged["a"]["c"].append(2)
    assert base == {"a": {"b": 1, "c": [1]}, "d": 2}
    assert over == {"a": {"b": 3}, "e": {"f": 4}}


def test_experiment_primaries_keep_the_config_order():
    cfg = {
        "experiments": {
            "x": {
                "primaries": [
                    {"architecture": "cnn2", "seeds": [3, 1]},
                    {"architecture": "miniresnet", "seeds": [0]},
                ]
            }
        }
    }
    assert experiment_primaries(cfg, "x") == [
        Primary("cnn2", 3),
        Primary("cnn2", 1),
        Primary("miniresnet", 0),
    ]


def experiments_config(primaries, methods=("grad",)) -> dict:
    return {
        "methods": {"grad": {}},
        "experiments": {"x": {"primaries": primaries, "methods": list(methods)}},
    }


@pytest.mark.parametrize(
    "cfg,expected",
    [
        (
            experiments_config([{"architecture": "cnn2", "seeds": [0]}]),
            "experiments.x.primaries: got 1 primary; expected at least 2",
        ),
        (
            experiments_config(
                [{"architecture": "cnn2", "seeds": [0]}, {"architecture": "cnn2", "seeds": [0]}]
            ),
            "experiments.x.primaries: cnn2-seed0 listed more than once",
        ),
        (
            experiments_config([{"architecture": "cnn2", "seeds": [0, 1]}], ["grad", "lime"]),
            r"experiments.x.methods\[1\]: got 'lime'; expected one of: grad$",
        ),
    ],
    ids=["one-primary", "twice", "unknown-method"],
)
def test_cross_key_checks(cfg, expected):
    with pytest.raises(ConfigError, match=expected):
        check_experiments(cfg)
    ok = experiments_config([{"architecture": "cnn2", "seeds": [0, 1]}])
    check_experiments(ok)


def test_results_must_be_a_writable_directory(tmp_path):
    check_results_writable(tmp_path / "not" / "yet" / "there")
    assert not (tmp_path / "not").exists(), "the check must not create anything"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="results: .* is not a directory"):
        check_results_writable(tmp_path / "file" / "results")


def test_local_dataset_files(tmp_path):
    archive = tmp_path / "data.tar.gz"
    assert local_source({"source": "archive", "url": f"file://{archive}"}) == {
        "archive": str(archive)
    }
    assert local_source({"source": "archive", "url": "https://example.org/d.tgz"}) == {}
    assert local_source({"source": "torchvision"}) == {}
    with pytest.raises(ConfigError, match="dataset.url: archive .* not found"):
        check_dataset_files({"source": "archive", "url": str(archive)})
    with pytest.raises(ConfigError, match="dataset.path: directory .* not found"):
        check_dataset_files({"source": "folder", "path": str(tmp_path / "nope")})
    archive.write_bytes(b"")
    check_dataset_files({"source": "archive", "url": f"file://{archive}"})
    check_dataset_files({"source": "folder", "path": str(tmp_path)})


def test_disjoint_primary_sets_move_seeds_by_the_seed_range():
    from saliency_fingerprints.configuration import (
        experiment_primaries,
        experiment_replicates,
        primary_set_stride,
    )

    config = {
        "replicates": {"n": 3, "disjoint_primaries": False},
        "experiments": {
            "pair": {
                "primaries": [{"architecture": "cnn2", "seeds": [0, 1]}],
                "replicates": {"disjoint_primaries": True},
            },
            "mixed": {
                "primaries": [
                    {"architecture": "cnn2", "seeds": [0]},
                    {"architecture": "miniresnet", "seeds": [0]},
                ],
                "replicates": {"n": 2, "disjoint_primaries": True},
            },
            "same": {"primaries": [{"architecture": "cnn2", "seeds": [0, 1]}]},
        },
    }
    sets = [experiment_primaries(config, "pair", r) for r in experiment_replicates(config, "pair")]
    assert sets == [
        [Primary("cnn2", 0), Primary("cnn2", 1)],
        [Primary("cnn2", 2), Primary("cnn2", 3)],
        [Primary("cnn2", 4), Primary("cnn2", 5)],
    ]
    assert experiment_replicates(config, "mixed") == [0, 1]
    assert experiment_primaries(config, "mixed", 1) == [
        Primary("cnn2", 1),
        Primary("miniresnet", 1),
    ]
    assert experiment_primaries(config, "same", 2) == [Primary("cnn2", 0), Primary("cnn2", 1)]
    assert primary_set_stride([Primary("miniresnet", s) for s in range(10)]) == 10
    assert primary_set_stride([Primary("cnn2", 3), Primary("cnn2", 7)]) == 5


def test_experiment_secondary_and_random_label_epochs():
    cfg = {
        "secondary": {"epochs": 20, "learning_rate": 0.001},
        "experiments": {"a": {"secondary": {"learning_rate": 0.01}}, "b": {}},
        "sanity_checks": {"random_labels": {"epochs": {"cnn2": 50}}},
    }
    assert experiment_secondary(cfg, "a") == {"epochs": 20, "learning_rate": 0.01}
    assert experiment_secondary(cfg, "b") == cfg["secondary"]
    assert (random_label_epochs(cfg, "cnn2"), random_label_epochs(cfg, "miniresnet")) == (50, None)
    cfg["sanity_checks"]["random_labels"]["epochs"] = 7
    assert random_label_epochs(cfg, "miniresnet") == 7
    assert random_label_epochs({}, "cnn2") is None
