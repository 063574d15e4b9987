"""Config validation: the schema stops unknown keys and wrong types, naming the key."""

import pytest
from conftest import run_workflow, tiny_config


def dry_run_error(tmp_path, cfg) -> str:
    proc = run_workflow(tmp_path, cfg, "-n", check=False)
    assert proc.returncode != 0, "an invalid config must stop the run"
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda c: c["secondary"].update(epochz=3), "epochz"),
        (lambda c: c.update(experimentz={}), "experimentz"),
        (lambda c: c["saliency"].update(pass_size="big"), "pass_size"),
        (lambda c: c["methods"]["smoothgrad"].update(n_samples=-1), "n_samples"),
        (lambda c: c["saliency"].update(target="random"), "target"),
        (lambda c: c["experiments"]["two_cnn2"].update(methods=["lime"]), "lime"),
    ],
    ids=["unknown-nested-key", "unknown-top-key", "wrong-type", "negative", "enum", "method"],
)
def test_invalid_config_names_the_key(tmp_path, edit, expected):
    cfg = tiny_config()
    edit(cfg)
    assert expected in dry_run_error(tmp_path, cfg)


def test_valid_config_plans_the_whole_dag(tmp_path):
    from conftest import planned_jobs

    jobs = planned_jobs(tmp_path, tiny_config())
    # 1 dataset; cnn2 seeds 0-3 (two_cnn2's 2 replicates on disjoint primary sets); 3 methods x
    # 4 primaries (predicted class) + grad x 2 (true class); one secondary job per (experiment,
    # method, variant): 3 x 2 + 1; ...
    assert jobs == {
        "prepare_dataset": 1,
        "train_primary": 4,
        "compute_saliency": 14,
        "train_secondary": 7,
        "cross_evaluate": 3,
        "combine_tables": 1,
        "plot_heatmap": 3,
        "plot_map_grid": 2,
        "map_diagnostics": 1,
        "train_random_label_primary": 1,
        "sanity_check": 3,
        "combine_sanity_tables": 1,
        "plot_sanity_curves": 1,
        "plot_sanity_maps": 1,
        "all": 1,
    }
