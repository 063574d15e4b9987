"""Smoke test of the benchmark suite (benchmarks/): every measuring function at tiny sizes on the
CPU, the renderer on their results, and the command line's report mode. Not a benchmark: no
figure is checked beyond being a positive number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import render, rss, rss_job  # noqa: E402
from benchmarks import run as cli  # noqa: E402
from benchmarks import saliency as bench_sal  # noqa: E402
from benchmarks.common import PAIR, frozen_model, load_average, machine_info  # noqa: E402
from benchmarks.gpu_training import (  # noqa: E402
    bench_gpu_training,
    eager_trainer,
    load_trainer,
    stacked_trainer,
)
from benchmarks.training import bench_training  # noqa: E402
from benchmarks.zarr_io import bench_zarr  # noqa: E402

CPU = torch.device("cpu")
DIGITS = (1, 8, 8)


def positive(summary: dict) -> bool:
    return summary["median"] > 0 and all(v > 0 for v in summary["runs"])


@pytest.fixture(scope="module")
def threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def result(tmp_path_factory, threads):
    """One tiny result of every section, as the command line would save it."""
    tmp = tmp_path_factory.mktemp("bench")
    out = {
        "device_kind": "cpu",
        "quick": True,
        "repeats": 1,
        "machine": machine_info(CPU, threads),
        "load_start": load_average(),
    }
    model = frozen_model("cnn2", DIGITS, CPU)
    limit = bench_sal.measure_limit(model, DIGITS, CPU, [16, 32], 1, 0.01)
    key = "cnn2 1x8x8"
    out["limit"] = {key: limit}
    mp = pytest.MonkeyPatch()
    mp.setattr(bench_sal, "tune_pass_size", lambda *a, **k: 16)  # measuring it takes seconds
    try:
        out["saliency"] = {
            key: bench_sal.bench_saliency(
                model, DIGITS, CPU, limit, repeats=1, min_time=0.01, work=0.005, mp_iterations=2
            )
        }
    finally:
        mp.undo()
    out["training"] = bench_training(CPU, repeats=1, train_images=64, quick=True)
    out["zarr"] = bench_zarr(tmp, maps=512, repeats=1)
    # the RSS section's job, in this process (its subprocess is the slow test below)
    dataset, weights = rss.synthetic_inputs(tmp, 24, DIGITS, "cnn2")
    record = rss_job.main(
        [
            "--dataset",
            str(dataset),
            "--weights",
            str(weights),
            "--out",
            str(tmp / "m.zarr"),
            "--method",
            "grad",
            "--images",
            "24",
            "--config",
            json.dumps({"images": "all", "target": "predicted", "pass_size": 16, "chunk_size": 8}),
        ]
    )
    assert record["seconds"] > 0 and record["vmhwm_kB"] > 0
    peak = {"peak_rss_MB": {"median": 700.0}, "maps_per_s": {"median": 24 / record["seconds"]}}
    out["rss"] = {
        "grad cnn2 1x8x8": {"by_images": {"24": peak, "240": peak}, "growth": 0.0, "pass_size": 16}
    }
    out["gpu_training"] = bench_gpu_training(
        CPU,
        repeats=1,
        min_time=0.01,
        cases={"minicnn": DIGITS},
        batch=4,
        bound_batch=16,
        warmup=1,
        fast_path=stacked_trainer,  # the workflow's fast path (eager on a CPU)
        fast_models=2,
        bf16=True,
    )
    out["load_end"], out["wall_s"] = load_average(), 1.0
    return out


def test_measurements(result):
    limit = result["limit"]["cnn2 1x8x8"]
    assert set(limit["by_pass_size"]) == {"16", "32"} and limit["best_pass_size"] in (16, 32)
    methods = result["saliency"]["cnn2 1x8x8"]["methods"]
    assert set(PAIR) <= set(methods)
    for name, entry in methods.items():
        assert positive(entry["engine_maps_per_s"]), name
        assert positive(entry["ratio_to_limit"]), name
    assert len(result["training"]) == 7
    assert all(positive(v["images_per_s"]) for v in result["training"].values())
    z = result["zarr"]
    assert z["maps"] == 512 and z["zarr_over_numpy_write"] > 0
    paths = result["gpu_training"]["minicnn 1x8x8"]["paths"]
    assert list(paths) == ["eager", "bound", "eager_loop", "fast_path", "eager_bf16", "bound_bf16"]
    for name, entry in paths.items():
        assert positive(entry["images_per_s"]) and positive(entry["fraction_of_bound"]), name
    assert paths["bound"]["fraction_of_bound"]["median"] == pytest.approx(1.0)
    assert (paths["fast_path"]["models"], paths["fast_path"]["batch"]) == (2, 4)
    assert paths["bound"]["batch"] == 16


def test_render_and_report(result, tmp_path):
    lines = render.render_device(result)
    text = "\n".join(lines)
    for heading in (
        "### The limit",
        "### Saliency maps/s",
        "### Training images/s",
        "### Zarr:",
        "### Peak RSS",
        "### Training-step throughput",
    ):
        assert heading in text, heading
    assert len(render.done_when(result)) == 4
    gpu_rows = [line for line in lines if line.startswith("| minicnn | 1x8x8 |")]
    assert len(gpu_rows) == 6 and all(row.count("|") == 10 for row in gpu_rows)
    # --report renders the newest full result per device kind, the notes last
    results = tmp_path / "results"
    results.mkdir()
    (results / "cpu-20000101T000000Z-quick.json").write_text(json.dumps(result))
    notes = tmp_path / "notes.md"
    notes.write_text("## Analysis\n\nnotes\n")
    target = tmp_path / "BENCHMARKS.md"
    cli.main(
        ["--report", "--results", str(results), "--markdown", str(target), "--notes", str(notes)]
    )
    written = target.read_text()
    assert written.startswith("# Benchmarks\n") and written.endswith("notes\n")
    assert written == render.render_markdown(render.choose_results(results), notes)
    assert "## CPU: " in written and "**quick run**" in written and "## GPU" not in written


def test_cli_options():
    args = cli.parse_args(["--quick", "--sections", "gpu-training", "--bf16"])
    assert args.repeats == 1 and args.bf16 and args.sections == "gpu-training"
    assert cli.parse_args([]).sections == "limit,saliency,training,zarr,rss"
    with pytest.raises(SystemExit):
        cli.parse_args(["--sections", "limit,nonsense"])
    assert load_trainer("benchmarks.gpu_training:eager_trainer") is eager_trainer
    with pytest.raises(ValueError):
        load_trainer("no_colon")


def test_rss_job_runs_as_a_module(tmp_path):
    """The RSS benchmark starts its job as `python -m benchmarks.rss_job`, from any directory
    (checked cheaply: --help)."""
    cmd = rss.job_command("d", "w", "o", "grad", {}, 10, CPU, 1, {})
    assert cmd[1:3] == ["-m", "benchmarks.rss_job"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.rss_job", "--help"],
        cwd=tmp_path,
        env=rss.job_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--dataset" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_rss_section_in_subprocesses(tmp_path, threads):
    out = rss.bench_rss(CPU, tmp_path, threads, images=20, repeats=1)
    assert len(out) == 2
    for entry in out.values():
        for size in entry["by_images"].values():
            assert size["peak_rss_MB"]["median"] > 50
