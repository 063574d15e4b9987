"""Stage functions take keyword arguments only (an argument-order mistake cannot happen), and
the shared stage preamble (:class:`saliency_fingerprints.stage.Stage`)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from saliency_fingerprints.datasets import prepare_dataset
from saliency_fingerprints.diagnostics import write_diagnostics
from saliency_fingerprints.evaluate import cross_evaluate
from saliency_fingerprints.paper import write_comparison
from saliency_fingerprints.plots import (
    plot_heatmap,
    plot_map_grid,
    plot_paper_figure,
    plot_sanity_curves,
    plot_sanity_maps,
)
from saliency_fingerprints.primary import train_primary
from saliency_fingerprints.saliency import compute_saliency_maps
from saliency_fingerprints.sanity import run_sanity_checks, train_random_label_primary
from saliency_fingerprints.sanity_tables import combine_sanity_tables
from saliency_fingerprints.secondary import train_secondary
from saliency_fingerprints.stage import Stage
from saliency_fingerprints.tables import combine_tables

STAGES = [
    prepare_dataset,
    train_primary,
    train_random_label_primary,
    compute_saliency_maps,
    train_secondary,
    cross_evaluate,
    combine_tables,
    run_sanity_checks,
    combine_sanity_tables,
    write_diagnostics,
    write_comparison,
    plot_heatmap,
    plot_map_grid,
    plot_paper_figure,
    plot_sanity_curves,
    plot_sanity_maps,
]


@pytest.mark.parametrize("stage", STAGES, ids=lambda f: f.__name__)
def test_stage_functions_take_keywords_only(stage):
    params = inspect.signature(stage).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), stage.__name__
    required = [p for p in params if p.default is inspect.Parameter.empty]
    with pytest.raises(TypeError, match="positional argument"):
        stage(*[None] * len(required))  # fails before running: nothing is read or written


def test_stage_records_provenance_and_writes_metrics(tmp_path):
    stage = Stage("unit", {"a": 1}, torch.device("cpu"), seed=3, threads=1)
    assert torch.initial_seed() == 3
    metrics = stage.write_metrics(tmp_path / "m.json", {"x": 2}, n=5)
    written = json.loads((tmp_path / "m.json").read_text())
    assert written == json.loads(json.dumps(metrics, default=str))
    record = written["provenance"]
    assert (record["stage"], record["config"], record["n"]) == ("unit", {"a": 1}, 5)
    assert record["device"].startswith("cpu")
