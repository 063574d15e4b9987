"""Comparison with the paper: its numbers, the join with ours, config checks, presets, figure."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import REPO, planned_jobs, run_workflow, tiny_config

from saliency_fingerprints.errors import ConfigError, DataError
from saliency_fingerprints.paper import (
    TABLES,
    check_paper_comparison,
    compare,
    markdown,
    write_comparison,
)
from saliency_fingerprints.tables import wilson_interval

MAPPING = {
    "tables": {
        "two_cnn2": "two_cnn2",
        "two_resnets": "two_miniresnet",
        "ten_resnets": "ten_miniresnet",
        "shuffled_two_resnets": "two_miniresnet",
        "cnn2_vs_resnet": "cnn2_vs_miniresnet",
    },
    "shuffled_variant": "shuffled_per_map",
}


def load_preset(name):
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


def test_paper_numbers_as_in_the_paper():
    """Table 1 and the Section 2.3 controls, cell by cell where it matters."""
    assert sum(len(t.cells) for t in TABLES.values()) == 16 + 9 + 9 + 3 + 1
    cnn = TABLES["two_cnn2"].cells
    assert cnn[("grad", "grad")] == 0.89 and cnn[("smoothgrad", "smoothgrad")] == 0.98
    assert cnn[("grad", "smoothgrad")] == 0.76  # trained on Grad, tested on SG
    assert cnn[("meaningful_perturbation", "meaningful_perturbation")] == 0.56
    assert cnn[("smoothgrad", "integrated_gradients")] == 0.51
    two = TABLES["two_resnets"].cells
    assert two[("grad", "integrated_gradients")] == 0.96 and two[("smoothgrad", "grad")] == 0.54
    ten = TABLES["ten_resnets"]
    assert ten.n_primaries == 10 and ten.cells[("smoothgrad", "integrated_gradients")] == 0.38
    assert ten.cells[("grad", "smoothgrad")] == 0.58
    shuffled = TABLES["shuffled_two_resnets"]
    assert shuffled.shuffled and shuffled.cells == {
        ("grad", "grad"): 0.60,
        ("smoothgrad", "smoothgrad"): 0.54,
        ("integrated_gradients", "integrated_gradients"): 0.54,
    }
    assert TABLES["cnn2_vs_resnet"].relation == ">"
    assert TABLES["two_cnn2"].methods == [
        "grad",
        "smoothgrad",
        "integrated_gradients",
        "meaningful_perturbation",
    ]


def synthetic_cross_evaluation(seed=0, n_test=300):
    """A cross_evaluation.csv-like table with every cell the mapping needs."""
    rng = np.random.default_rng(seed)
    rows = []
    for key, experiment in MAPPING["tables"].items():
        table = TABLES[key]
        variant = "shuffled_per_map" if table.shuffled else "original"
        for train, test in table.cells:
            correct = int(rng.integers(0, n_test + 1))
            low, high = wilson_interval(correct, n_test)
            rows.append(
                {
                    "experiment": experiment,
                    "variant": variant,
                    "train_method": train,
                    "test_method": test,
                    "accuracy": correct / n_test,
                    "ci_low": low,
                    "ci_high": high,
                    "chance": 1 / table.n_primaries,
                    "n_test": n_test,
                    "n_primaries": table.n_primaries,
                }
            )
    return pd.DataFrame(rows).drop_duplicates(
        ["experiment", "variant", "train_method", "test_method"]
    )


def test_compare_has_every_cell_with_difference_and_ci():
    ours = synthetic_cross_evaluation()
    result = compare(ours, MAPPING)
    assert len(result) == 38
    assert result["ours"].notna().all()
    assert np.allclose(result["difference"], result["ours"] - result["paper"])
    assert (result["ci_low"] <= result["ours"] + 1e-12).all()
    assert (result["ours"] <= result["ci_high"] + 1e-12).all()
    assert (result["n_test"] == 300).all()
    row = result[
        (result.paper_table == "two_cnn2")
        & (result.train_method == "grad")
        & (result.test_method == "smoothgrad")
    ].iloc[0]
    source = ours[
        (ours.experiment == "two_cnn2")
        & (ours.train_method == "grad")
        & (ours.test_method == "smoothgrad")
    ].iloc[0]
    assert row.paper == 0.76 and row.ours == pytest.approx(source.accuracy)
    inside = row.ci_low <= 0.76 <= row.ci_high
    assert row.paper_in_ci == inside
    shuffled = result[result.paper_table == "shuffled_two_resnets"]
    assert set(shuffled.variant) == {"shuffled_per_map"} and len(shuffled) == 3
    text = markdown(result)
    for table in TABLES.values():
        assert table.title in text
    assert "| SG | Grad | 0.76 |" in text
    assert "| Grad | Grad | >0.90 |" in text


def test_lower_bound_cell_is_consistent_when_our_interval_reaches_it():
    ours = synthetic_cross_evaluation()
    mask = ours.experiment == "cnn2_vs_miniresnet"
    ours.loc[mask, ["accuracy", "ci_low", "ci_high"]] = [0.95, 0.92, 0.97]
    row = compare(ours, MAPPING).query("paper_table == 'cnn2_vs_resnet'").iloc[0]
    assert row.paper_relation == ">" and row.paper_in_ci
    ours.loc[mask, ["accuracy", "ci_low", "ci_high"]] = [0.60, 0.55, 0.65]
    row = compare(ours, MAPPING).query("paper_table == 'cnn2_vs_resnet'").iloc[0]
    assert not row.paper_in_ci


def test_missing_cell_is_a_data_error(tmp_path):
    ours = synthetic_cross_evaluation()
    ours = ours[~((ours.experiment == "ten_miniresnet") & (ours.test_method == "grad"))]
    with pytest.raises(DataError, match="ten_miniresnet"):
        compare(ours, MAPPING)
    csv = tmp_path / "cross_evaluation.csv"
    synthetic_cross_evaluation().to_csv(csv, index=False)
    result = write_comparison(
        cross_evaluation_csv=csv, cfg=MAPPING, out_csv=tmp_path / "p.csv", out_md=tmp_path / "p.md"
    )
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(result) == 38
    assert (tmp_path / "p.md").read_text().startswith("# Comparison with the paper")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["paper_comparison"]["tables"].update(two_cnn2="nope"), "not in 'experiments'"),
        (
            lambda c: c["experiments"]["two_cnn2"]["methods"].remove("meaningful_perturbation"),
            "lacks method",
        ),
        (
            lambda c: c["experiments"]["two_miniresnet"].update(variants=["original"]),
            "lacks variant 'shuffled_per_map'",
        ),
    ],
)
def test_config_cross_checks_name_the_key(edit, message):
    cfg = copy.deepcopy(load_preset("cifar10-cpu"))
    check_paper_comparison(cfg)  # the preset itself is consistent
    edit(cfg)
    with pytest.raises(ConfigError, match=message) as err:
        check_paper_comparison(cfg)
    assert "paper_comparison.tables." in str(err.value)


def test_default_config_has_no_paper_comparison(tmp_path):
    cfg = tiny_config()
    assert "paper_comparison" not in cfg
    assert "paper_comparison" not in planned_jobs(tmp_path, cfg)


def test_paper_preset_plans_the_full_job_set(tmp_path):
    cfg = load_preset("paper")
    del cfg["studies"]  # planned in test_paper_preset_plans_its_studies
    jobs = planned_jobs(tmp_path, cfg)
    # cnn2 seeds 0-5 (three disjoint pairs) + miniresnet seeds 0-9 (shared by identity)
    assert jobs["train_primary"] == 6 + 10
    # maps: 6 cnn2 x 4 methods, each for the predicted and the true class; 10 miniresnets x 3
    # methods, predicted and true (the true-class pairs' seeds 0-5 are among the ten's)
    assert jobs["compute_saliency"] == 2 * 6 * 4 + 2 * 10 * 3
    # one job per (experiment, method, variant), every replicate in it: two_cnn2 4 x 2 variants,
    # its true-class twin 4, two_miniresnet 3 x 2, its twin 3, ten 3, its twin 3, cross-arch 1
    assert jobs["train_secondary"] == 8 + 4 + 6 + 3 + 3 + 3 + 1
    assert jobs["cross_evaluate"] == 9
    assert jobs["paper_comparison"] == 1 and jobs["paper_figure"] == 1


def test_paper_preset_plans_its_studies(tmp_path):
    jobs = planned_jobs(tmp_path, load_preset("paper"))
    # studies: n_primaries k = 2, 4, 20 (k = 10 is ten_miniresnet; k = 20 trains miniresnet
    # seeds 10-19 and their Grad maps), learning_curve 0.1, 0.25, 0.5 (1.0 is two_miniresnet);
    # init_vs_data: 2 primaries (seed 1 on seed 0's data, the reverse) with Grad/SG/IG maps and
    # 3 levels x 3 methods (its "both" has 3 methods, so it is not n_primaries' k = 2);
    # training_length: 0, 1, 3, 7 and 15 epochs of seeds 0, 1 with true-class Grad maps: 5
    # secondaries (its targets differ from n_primaries', so 15 is not k = 2) and 4 x 2 primaries
    # and map stores (15 epochs' true-class maps are the true-class twin's)
    assert jobs["study_table"] == 4
    assert jobs["train_primary"] == 6 + 10 + 10 + 2 + 4 * 2
    assert jobs["compute_saliency"] == 2 * 6 * 4 + 2 * 10 * 3 + 10 + 2 * 3 + 4 * 2
    assert jobs["train_secondary"] == 8 + 4 + 6 + 3 + 3 + 3 + 1 + 3 + 3 + 3 * 3 + 5
    assert jobs["cross_evaluate"] == 9 + 6 + 3 + 5


def test_paper_preset_ships_replicates():
    paper = load_preset("paper")
    assert paper["replicates"]["n"] >= 3
    for name in ("two_cnn2", "two_miniresnet", "cnn2_vs_miniresnet"):
        assert paper["experiments"][name]["replicates"]["disjoint_primaries"] is True
    assert any(e.get("target") == "true" for e in paper["experiments"].values())


def test_cpu_preset_plans_the_same_paper_experiments(tmp_path):
    cfg = load_preset("cifar10-cpu")
    assert cfg["dataset"]["source"] == "archive"
    archive = tmp_path / "cifar10-jpg.tar.gz"
    archive.write_bytes(b"")  # a dry run needs the input to exist, not to be valid
    cfg["dataset"]["url"] = str(archive)
    paper = load_preset("paper")
    assert cfg["paper_comparison"] == paper["paper_comparison"]
    assert cfg["replicates"]["n"] >= 3
    for name in set(cfg["paper_comparison"]["tables"].values()):  # Table 1's experiments
        spec, full = cfg["experiments"][name], paper["experiments"][name]
        assert spec["primaries"] == full["primaries"]
        assert spec["methods"] == full["methods"]
        assert set(spec.get("variants", [])) <= set(full.get("variants", []))
    # every shipped preset has a true-class experiment (the class cue removed)
    assert any(e.get("target") == "true" for e in cfg["experiments"].values())
    jobs = planned_jobs(tmp_path, cfg)
    assert jobs["paper_comparison"] == 1 and jobs["train_secondary"] >= 10


def write_store(path: Path, maps: np.ndarray, primary: str, method: str, samples) -> None:
    ds = xr.Dataset(
        {"maps": (("sample", "channel", "y", "x"), maps.astype(np.float32))},
        coords={"sample": np.asarray(samples), "primary": primary, "method": method},
    )
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)


@pytest.mark.filterwarnings("ignore:The data type")
def test_paper_figure_draws_the_same_images_in_every_panel(tmp_path):
    from saliency_fingerprints.plots import plot_paper_figure

    rng = np.random.default_rng(0)
    samples = np.arange(10, 20)

    def stores(arch, methods):
        out = {}
        for method in methods:
            out[method] = {}
            for seed in (0, 1):
                path = tmp_path / f"{method}-{arch}-{seed}.zarr"
                write_store(
                    path, rng.normal(size=(10, 3, 8, 8)), f"{arch}-seed{seed}", method, samples
                )
                out[method][f"{arch}-seed{seed}"] = path
        return out

    panels = [
        {
            "title": "(a)",
            "stores": stores("miniresnet", ["grad"]),
            "variants": ["original", "shuffled_per_map"],
        },
        {
            "title": "(b)",
            "stores": stores("cnn2", ["grad", "smoothgrad"]),
            "variants": ["original"],
        },
    ]
    dataset = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), rng.random((20, 3, 8, 8), dtype=np.float32))}
    )
    out = tmp_path / "fig.png"
    plot_paper_figure(
        panels=panels,
        out=out,
        n_images=4,
        preprocess={"reduce": "abs_sum", "clip_percentile": 99.0},
        shuffle_seed=0,
        dpi=40,
        dataset=dataset,
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_paper_comparison_end_to_end_on_digits(tmp_path):
    """The whole chain on digits with MP: table with every two_cnn2 cell, figure, n_test."""
    cfg = tiny_config()
    cfg["methods"]["meaningful_perturbation"] = {"iterations": 5, "mask_size": 4}
    cfg["experiments"]["two_cnn2"]["methods"].append("meaningful_perturbation")
    cfg["paper_comparison"] = {"tables": {"two_cnn2": "two_cnn2"}, "figure_images": 3}
    run_workflow(tmp_path, cfg)
    table = pd.read_csv(tmp_path / "results/tables/paper_comparison.csv")
    assert len(table) == 16 and table["ours"].notna().all()
    assert (table["n_test"] > 0).all()
    figure = tmp_path / "results/figures/paper_figures.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Two 2-layer CNNs" in (tmp_path / "results/tables/paper_comparison.md").read_text()
