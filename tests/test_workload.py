"""The work a config plans for its GPU stages: exactly what a run then does, where that is fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from saliency_fingerprints.stage_rates import collect
from saliency_fingerprints.workload import Planner, load_config, main, parse_shape, render


def job_key(stage: str, path: str) -> str:
    """A measured job's name as the planner gives it."""
    parts = Path(path).parts
    if stage == "train_primary":
        return parts[-2]
    if stage == "compute_saliency":
        return "/".join(parts[-3:]).removesuffix(".zarr")
    return "/".join((parts[-5], parts[-3], parts[-2]))


def test_plan_matches_a_run(tiny_run: Path, monkeypatch) -> None:
    monkeypatch.chdir(tiny_run)
    config = load_config(["config.yaml"])
    measured = {(j.stage, job_key(j.stage, j.path)): j for j in collect(Path("results"))}
    from saliency_fingerprints.workload import store_sizes

    planned = {(j.stage, j.path): j for j in Planner(config, *store_sizes(config)).jobs()}
    assert set(planned) == set(measured)
    for key, plan in planned.items():
        done = measured[key]
        assert plan.model == done.model, key
        stage, name = key
        if stage == "train_secondary" or name.endswith("-random_labels"):
            assert 0 < done.work <= plan.work, key  # early stopping: at most the plan
        else:
            assert done.work == plan.work, key  # fixed work: exactly the plan


def test_counts_on_a_toy_config(tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_config()
    cfg["results"] = str(tmp_path / "results")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config([str(path)])
    train, test = 300, 100
    jobs = Planner(config, train, test, (1, 8, 8)).jobs()
    primaries = [j for j in jobs if j.stage == "train_primary" and "random" not in j.path]
    fraction = config["primary_training"]["train_fraction"]
    epochs = config["primary_training"]["epochs"]
    expected = round(train * fraction) * epochs
    assert all(j.work in (expected, 0) or "epoch" in j.path for j in primaries)
    grads = [j for j in jobs if j.stage == "compute_saliency" and "/grad/" in j.path]
    maps = config["saliency"]["max_images"] or train + test
    assert grads and all(j.work == min(maps, train + test) for j in grads)
    text = render(jobs, {("gradient rows", grads[0].model): 10.0}, "config.yaml", "b.json")
    assert "| compute_saliency | cnn2 1x8x8 | grad |" in text
    assert "for the rows with a bound (the others have none)" in text
    assert "At the bounds" not in render(jobs, {("gradient rows", "resnet 9x9x9"): 1.0})


def test_command_line_errors(tmp_path: Path, capsys) -> None:
    cfg = tiny_config()
    cfg["results"] = str(tmp_path / "results")  # nothing run: no dataset store
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--configfile", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: no dataset store under") and "--images" in err
    assert "\n" not in err
    assert main(["--configfile", str(path), "--images", "300", "100", "--shape", "1x8x8"]) == 0
    assert "| train_secondary |" in capsys.readouterr().out
    sizes = ["--images", "300", "100", "--shape", "1x8x8"]
    assert main(["--configfile", str(path), *sizes, "--experiments", "two_cnn2"]) == 0
    table = capsys.readouterr().out
    assert "(experiments two_cnn2)" in table and "| train_secondary | minicnn 1x8x8 | " in table
    assert main(["--configfile", str(path), *sizes, "--experiments", "nope"]) == 1
    assert "--experiments: no experiment 'nope'; expected some of: " in capsys.readouterr().err
    with pytest.raises(Exception, match="expected CxHxW"):
        parse_shape("32x32")
    assert main(["--configfile", str(tmp_path / "none.yaml"), "--images", "1", "1"]) == 1
    assert "cannot read the config" in capsys.readouterr().err


def test_projection_at_measured_rates(tiny_run: Path, monkeypatch) -> None:
    """A run's own plan at its own rates takes its own job time, for the stages whose work is
    fixed (the secondaries' plan is all epochs, so at least theirs); with its log, the time each
    job took outside its own timing too, so the log's job time."""
    monkeypatch.chdir(tiny_run)
    from saliency_fingerprints.stage_rates import rates
    from saliency_fingerprints.stage_times import parse_log
    from saliency_fingerprints.workload import LOG_RULES, Projection, store_sizes

    config = load_config(["config.yaml"])
    plan = rates(Planner(config, *store_sizes(config)).jobs())
    done = {r.key: r for r in rates(collect(Path("results")))}
    log = next(Path(".snakemake/log").glob("*.snakemake.log"))
    logged = {s.rule: s for s in parse_log(log.read_text())}
    bare, timed = Projection.measure("results"), Projection.measure("results", log, 2)
    assert set(bare.rates) == set(done) and not bare.overheads
    assert set(timed.overheads) == set(LOG_RULES)  # a fresh run: every stage's jobs logged
    for r in plan:  # per stage, model and method: the jobs' own time
        if r.stage == "train_secondary":
            assert bare.job_seconds(r) >= done[r.key].seconds * (1 - 1e-9)
        else:
            assert bare.job_seconds(r) == pytest.approx(done[r.key].seconds, rel=1e-9)
    for stage, rules in LOG_RULES.items():  # per stage: the log's job time
        projected = sum(timed.job_seconds(r) for r in plan if r.stage == stage)
        own = sum(r.seconds for r in done.values() if r.stage == stage)
        in_log = sum(logged[rule].job_seconds for rule in rules if rule in logged)
        if stage == "train_secondary":
            assert projected >= in_log * (1 - 1e-9)
        else:
            assert projected == pytest.approx(max(in_log, own), rel=1e-9)
    jobs = Planner(config, *store_sizes(config)).jobs()
    text = render(jobs, {}, projection=timed)
    assert "| measured (/s of job time) | projected job seconds |" in text
    total = sum(timed.job_seconds(r) for r in plan)
    assert f"At the rates measured in results: {total:,.0f} s of job time" in text
    assert f"with 2 jobs at a time about {total / 2:,.0f} s of wall time" in text
    assert "per job: train_primary " in text and "not measured" not in text
    assert "leaves out each job's start-up (no log given)" in render(jobs, {}, projection=bare)
    # a model no job measured is named, and left out of the sum
    partial = Projection({k: v for k, v in bare.rates.items() if k[0] != "train_secondary"})
    text = render(jobs, {}, projection=partial)
    assert "; not measured, so left out: train_secondary minicnn" in text
    # a method no store measured is left out, not projected at another method's rate
    no_ig = {k: v for k, v in bare.rates.items() if k[2] != "integrated_gradients"}
    text = render(jobs, {}, projection=Projection(no_ig))
    assert "left out: compute_saliency cnn2 1x8x8 integrated_gradients." in text
    assert "with 1 job at a time" in text


def test_projection_command_line(tiny_run: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tiny_run)
    log = str(next(Path(".snakemake/log").glob("*.snakemake.log")))
    args = ["--configfile", "config.yaml", "--rates", "results"]
    assert main([*args, "--concurrency", "3", "--log", log]) == 0
    out = capsys.readouterr().out
    assert "with 3 jobs at a time about" in out and "per job: train_primary" in out
    assert main(["--configfile", "config.yaml", "--rates", "nowhere"]) == 1
    assert "nowhere: no such results directory" in capsys.readouterr().err
    assert main([*args, "--concurrency", "0"]) == 1
    assert "--concurrency: expected at least 1, got 0" in capsys.readouterr().err
    assert main([*args, "--log", "missing.log"]) == 1
    assert "missing.log" in capsys.readouterr().err
