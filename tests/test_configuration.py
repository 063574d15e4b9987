"""Unit tests of the config checks behind rules/common.smk (no workflow run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from saliency_fingerprints.configuration import (
    check_dataset_files,
    check_experiments,
    check_results_writable,
    check_schema,
    deep_merge,
    experiment_primaries,
    key_path,
    local_source,
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
            lambda c: c["experiments"]["two_cnn2"]["primaries"][0].update(seeds=[1, 1]),
            "experiments.two_cnn2.primaries[0].seeds: 1 listed more than once",
        ),
    ],
    ids=["nested-key", "top-key", "enum", "minimum", "type", "required", "unique"],
)
def test_schema_errors_name_the_key_and_the_expectation(edit, expected):
    cfg = tiny_config()
    edit(cfg)
    assert expected in schema_error(cfg)


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
    assert experiment_primaries(cfg, "x") == [("cnn2", 3), ("cnn2", 1), ("miniresnet", 0)]


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
        [("cnn2", 0), ("cnn2", 1)],
        [("cnn2", 2), ("cnn2", 3)],
        [("cnn2", 4), ("cnn2", 5)],
    ]
    assert experiment_replicates(config, "mixed") == [0, 1]
    assert experiment_primaries(config, "mixed", 1) == [("cnn2", 1), ("miniresnet", 1)]
    assert experiment_primaries(config, "same", 2) == [("cnn2", 0), ("cnn2", 1)]
    assert primary_set_stride([("miniresnet", s) for s in range(10)]) == 10
    assert primary_set_stride([("cnn2", 3), ("cnn2", 7)]) == 5
