"""Key order in the config is not a change: every rule's params are canonical (sorted keys).

Snakemake compares the ``repr`` of each params entry with the one it recorded for a job's
outputs (``--rerun-triggers params``, on by default). A dict's ``repr`` follows its insertion
order, so before the rules passed their dicts through ``canonical`` the tiny config written with
its keys sorted (as ``yaml.safe_dump`` writes it) planned every job again.
"""

from __future__ import annotations

import shutil

import pytest
import yaml
from conftest import job_counts, run_workflow, tiny_config

from saliency_fingerprints.configuration import canonical


def reversed_keys(value):
    """``value`` with the keys of every mapping in it in reverse order (lists unchanged)."""
    if isinstance(value, dict):
        return {k: reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_keys(v) for v in value]
    return value


DUMPS = {
    "sorted": lambda cfg: yaml.safe_dump(cfg, sort_keys=True),
    "reversed": lambda cfg: yaml.safe_dump(reversed_keys(cfg), sort_keys=False),
}


def plan(workdir, text: str) -> dict[str, int]:
    """Job counts of a dry run (default rerun triggers) with ``text`` as the config file."""
    path = workdir / "reordered.yaml"
    path.write_text(text)
    return job_counts(run_workflow(workdir, None, "--configfile", str(path), "-n", "-q", "rules"))


@pytest.fixture(scope="module")
def finished(tiny_run, tmp_path_factory):
    """A copy of the finished tiny run (dry runs write Snakemake's locks and logs into it)."""
    return shutil.copytree(tiny_run, tmp_path_factory.mktemp("canonical") / "run", symlinks=True)


def test_canonical_sorts_mappings_recursively_and_keeps_list_order():
    a = {"b": 1, "a": {"y": [3, {"q": 1, "p": 2}], "x": (2, 1)}}
    b = {"a": {"x": (2, 1), "y": [3, {"p": 2, "q": 1}]}, "b": 1}
    assert repr(a) != repr(b) and a == b
    assert repr(canonical(a)) == repr(canonical(b))
    assert canonical(a) == a  # the same value: jobs see the same settings
    assert list(canonical(a)) == ["a", "b"]
    assert canonical([{"b": 0, "a": 1}, 2]) == [{"a": 1, "b": 0}, 2]
    assert canonical({2: "x", "1": "y", 1: "z"}) == {1: "z", "1": "y", 2: "x"}
    assert list(canonical({"b": 0, "a": 1}).keys()) == ["a", "b"]
    assert canonical([3, 1, 2]) == [3, 1, 2]  # lists keep their order


@pytest.mark.parametrize("order", sorted(DUMPS))
def test_reordered_config_plans_nothing(finished, order):
    cfg = tiny_config()
    text = DUMPS[order](cfg)
    assert yaml.safe_load(text) == cfg and text != yaml.safe_dump(cfg, sort_keys=False)
    assert plan(finished, text) == {}


def test_real_edit_in_a_sorted_config_still_plans_its_jobs(finished):
    cfg = tiny_config()
    cfg["plots"]["cmap"] = "plasma"  # the heatmaps' colour map: two_cnn2 x 2 variants, true class
    assert plan(finished, DUMPS["sorted"](cfg)) == {"plot_heatmap": 3, "all": 1}
    cfg = tiny_config()
    cfg["methods"]["smoothgrad"]["noise_level"] = 0.2
    planned = plan(finished, DUMPS["reversed"](cfg))
    assert planned["compute_saliency"] == 4 and planned["train_secondary"] == 2, planned
