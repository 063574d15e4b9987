"""Interruption safety: a job killed mid-write leaves nothing a later run takes for complete.

* Workflow: a copy of the tiny run, taken back to before its SmoothGrad maps, is run again, and
  its whole process tree (Snakemake and its jobs) is SIGKILLed the moment a saliency store is
  being written (its ``.partial`` store exists). The store is not there, Snakemake plans the job
  again, ``--rerun-incomplete`` finishes the maps, and every map equals the uninterrupted run's
  (``tiny_run``) bit for bit.
* Library: a saliency job interrupted (exception, or SIGKILL in a subprocess) resumes from its
  complete chunks and gives bitwise the maps of an uninterrupted job; a ``.partial`` store from
  other parameters is discarded, not resumed; a writer killed inside ``atomic_output`` leaves
  neither the output nor (after the next write) its temporary; a killed training job leaves no
  weights or metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from conftest import REPO, SNAKEMAKE, planned_jobs, run_workflow, tiny_config, with_defaults

from saliency_fingerprints.datasets import prepare_dataset
from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import compute_saliency_maps, open_maps
from saliency_fingerprints.saliency import job as saliency_job
from saliency_fingerprints.store import atomic_output
from saliency_fingerprints.training import save_model

CPU = torch.device("cpu")


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def kill_tree(pid: int) -> None:
    """Freeze, then SIGKILL, a process and all its descendants (a crash of the whole run)."""
    procs = process_tree(pid)
    signal_all(procs, signal.SIGSTOP)  # first, so that no process reacts to another's death
    signal_all(procs, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


def leftovers(root: Path) -> list[Path]:
    """Temporary or partial outputs anywhere under ``root``."""
    return sorted(p for p in root.rglob("*") if p.name.endswith(".partial") or ".tmp-" in p.name)


def map_arrays(store: Path) -> dict[str, np.ndarray]:
    ds = open_maps(store)
    return {name: ds[name].values for name in ("maps", "sample", "target", "prediction")}


def assert_same_maps(a: Path, b: Path) -> None:
    x, y = map_arrays(a), map_arrays(b)
    for name in x:
        assert x[name].dtype == y[name].dtype, (a, name)
        assert x[name].tobytes() == y[name].tobytes(), (a, b, name)


# -- the workflow, killed while a saliency store is being written -------------------------------


def start_and_kill_mid_write(workdir: Path, log: Path) -> Path | None:
    """Run the workflow in ``workdir``; SIGKILL its whole process tree while a saliency store is
    being written. Returns that store's ``.partial`` path, or None if none was caught."""
    cmd = [
        *(SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir)),
        *("--configfile", str(workdir / "config.yaml")),
        *("--profile", str(REPO / "profiles" / "default"), "--cores", "2"),
    ]
    saliency = workdir / "results" / "saliency"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 900
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                partial = next(iter(saliency.glob("*/*/*.zarr.partial")), None)
                if partial is not None:
                    procs = process_tree(proc.pid)
                    signal_all(procs, signal.SIGSTOP)  # frozen: is it still mid-write?
                    if partial.exists():
                        kill_tree(proc.pid)
                        return partial
                    signal_all(procs, signal.SIGCONT)  # renamed in the meantime: go on
                time.sleep(0.002)
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
            proc.wait()
    return None


def forget_smoothgrad(workdir: Path) -> None:
    """Delete the SmoothGrad maps and everything built on them: the state of a run that has not
    got that far yet."""
    results = workdir / "results"
    doomed = [
        *results.glob("saliency/*/smoothgrad/*.zarr"),
        *results.glob("experiments/*/secondaries/smoothgrad"),
        *results.glob("experiments/*/cross_evaluation"),
        results / "tables",
        results / "figures",
    ]
    for path in doomed:
        shutil.rmtree(path)


def test_workflow_killed_mid_write_recovers_exactly(tiny_run, tmp_path):
    """A copy of the finished tiny run is taken back to before its SmoothGrad maps, rerun, and
    crashed mid-write: the next run finishes the job, and every map equals the uninterrupted
    run's, bit for bit."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    cfg = tiny_config(sanity=False)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    caught = None
    for attempt in range(3):  # each saliency job lasts a fraction of a second: retry a miss
        forget_smoothgrad(workdir)
        caught = start_and_kill_mid_write(workdir, tmp_path / f"interrupted-{attempt}.log")
        if caught is not None:
            break
    if caught is None:
        pytest.fail("three runs ended before a saliency store was caught mid-write")

    store = caught.with_name(caught.name.removesuffix(".partial"))
    # the rule declares <store>/zarr.json: Snakemake made the store's folder before the job, and
    # the killed job left it empty, without the zarr.json that marks a finished store
    assert not store.exists() or not any(store.iterdir()), "a killed job left its output in place"
    assert list((workdir / ".snakemake/incomplete").iterdir()), "no job marked incomplete"

    # The crash left Snakemake's lock behind: unlock, as a user would, then plan.
    run_workflow(workdir, cfg, "--unlock")
    plan = planned_jobs(workdir, cfg)
    assert 1 <= plan["compute_saliency"] <= 4 and plan["combine_tables"] == 1
    assert "train_primary" not in plan and "prepare_dataset" not in plan

    # The maps are what the crash hit: run up to them (what follows them is a function of the
    # maps, whose reproduction tests/test_determinism.py checks), then nothing of them is left
    run_workflow(workdir, cfg, "--rerun-incomplete", "--until", "compute_saliency")
    rest = planned_jobs(workdir, cfg)
    assert "compute_saliency" not in rest and rest["combine_tables"] == 1
    assert leftovers(workdir / "results") == []
    stores = sorted(p.relative_to(tiny_run) for p in tiny_run.glob("results/saliency/*/*/*.zarr"))
    assert store.relative_to(workdir) in stores
    for rel in stores:
        assert_same_maps(workdir / rel, tiny_run / rel)


# -- the library: resume, discard, atomic writes ------------------------------------------------


@pytest.fixture(scope="module")
def primary(tmp_path_factory) -> tuple[Path, Path]:
    """A digits dataset store and an (untrained, Glorot-initialised) cnn2's weights."""
    root = tmp_path_factory.mktemp("interruption")
    dataset = root / "digits.zarr"
    prepare_dataset(
        cfg=with_defaults("dataset", name="digits", source="sklearn_digits"), out=dataset
    )
    torch.manual_seed(0)
    weights = root / "cnn2.safetensors"
    save_model(build_model("cnn2", 1, 8, 10), weights, "cnn2", 1, 8, 10)
    return dataset, weights


SALIENCY = with_defaults(
    "saliency",
    {
        "images": "all",
        "max_images": 240,
        "seed": 0,
        "target": "predicted",
        "pass_size": 64,
        "chunk_size": 32,
        "dtype": "float32",
    },
)
SMOOTHGRAD = {"n_samples": 4, "noise_level": 0.15, "magnitude": True, "seed": 0}


def compute(primary, out, method_params=SMOOTHGRAD, saliency=SALIENCY):
    dataset, weights = primary
    compute_saliency_maps(
        dataset_path=dataset,
        weights_path=weights,
        out=out,
        method="smoothgrad",
        method_params=method_params,
        cfg=saliency,
        primary="cnn2-seed0",
        device=CPU,
        threads=1,
    )


class Interrupt(Exception):
    pass


def interrupt_after(monkeypatch, n_chunks: int) -> list[int]:
    """Make the saliency engine raise on its ``n_chunks + 1``-th chunk; returns the call log."""
    calls: list[int] = []
    real = saliency_job.build_method

    def build(*args, **kwargs):
        engine = real(*args, **kwargs)
        attribute = engine.attribute

        def flaky(images, targets=None, sample_ids=None):
            calls.append(len(images))
            if len(calls) > n_chunks:
                raise Interrupt
            return attribute(images, targets, sample_ids)

        engine.attribute = flaky
        return engine

    monkeypatch.setattr(saliency_job, "build_method", build)
    return calls


def test_resume_after_interruption_is_bitwise_identical(primary, tmp_path, monkeypatch, caplog):
    reference = tmp_path / "reference.zarr"
    compute(primary, reference)

    out = tmp_path / "maps.zarr"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupt):
        compute(primary, out)
    monkeypatch.undo()
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and partial.exists()

    calls = interrupt_after(monkeypatch, 10**6)  # count the chunks the resumed job computes
    with caplog.at_level("INFO"):
        compute(primary, out)
    assert "resuming, 3 of 8 chunks already written" in caplog.text
    assert len(calls) == 5  # 240 maps in chunks of 32: 8 chunks, 3 were done
    assert out.exists() and not partial.exists()
    assert_same_maps(out, reference)
    assert "fingerprint" not in open_maps(out).attrs and "done_chunks" not in open_maps(out).attrs


def test_partial_store_from_other_parameters_is_discarded(primary, tmp_path, monkeypatch):
    out = tmp_path / "maps.zarr"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupt):
        compute(primary, out)  # noise_level 0.15, interrupted
    monkeypatch.undo()
    other = {**SMOOTHGRAD, "noise_level": 0.3}  # the config was edited before the rerun
    calls = interrupt_after(monkeypatch, 10**6)
    compute(primary, out, method_params=other)
    assert len(calls) == 8  # nothing was reused
    reference = tmp_path / "reference.zarr"
    compute(primary, reference, method_params=other)
    assert_same_maps(out, reference)


def done_chunks(partial: Path) -> int:
    """Chunks a ``.partial`` map store marks complete (0 while unreadable or mid-rewrite)."""
    try:
        meta = json.loads((partial / "zarr.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(meta.get("attributes", {}).get("done_chunks", []))


def test_sigkill_mid_write_resumes_bitwise(primary, tmp_path):
    """A saliency job in its own process, SIGKILLed once some chunks are on disk."""
    dataset, weights = primary
    saliency = {**SALIENCY, "max_images": 800, "chunk_size": 16}  # 50 chunks
    params = {**SMOOTHGRAD, "n_samples": 16}
    out = tmp_path / "maps.zarr"
    partial = out.with_name(out.name + ".partial")
    script = textwrap.dedent(
        f"""
        import torch
        from saliency_fingerprints.saliency import compute_saliency_maps
        compute_saliency_maps(
            dataset_path={str(dataset)!r}, weights_path={str(weights)!r}, out={str(out)!r},
            method="smoothgrad", method_params={params!r}, cfg={saliency!r},
            primary="cnn2-seed0", device=torch.device("cpu"), threads=1,
        )
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and done_chunks(partial) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the job finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists() and partial.exists()
    killed_at = done_chunks(partial)
    assert 2 <= killed_at < 50

    compute(primary, out, method_params=params, saliency=saliency)
    reference = tmp_path / "reference.zarr"
    compute(primary, reference, method_params=params, saliency=saliency)
    assert_same_maps(out, reference)
    assert leftovers(tmp_path) == []


def test_atomic_output_killed_mid_write(tmp_path):
    """SIGKILL inside ``atomic_output``: the old output survives untouched, the new one never
    appears, and the next writer clears the dead writer's temporary."""
    final = tmp_path / "out" / "weights.bin"
    final.parent.mkdir()
    final.write_bytes(b"old")
    started = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import pathlib, time
        from saliency_fingerprints.store import atomic_output
        with atomic_output({str(final)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
                f.flush()
                pathlib.Path({str(started)!r}).touch()
                time.sleep(60)
                f.write(b" content")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert final.read_bytes() == b"old"
    stale = leftovers(final.parent)
    assert [p.name for p in stale] == [f".weights.bin.tmp-{proc.pid}"]

    with atomic_output(final) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new"
    assert leftovers(final.parent) == []


def test_killed_training_job_leaves_no_outputs(primary, tmp_path):
    dataset, _ = primary
    out = tmp_path / "primary"
    training = with_defaults(
        "primary_training", train_fraction=0.5, epochs=10_000, batch_size=64, learning_rate=1e-3
    )
    log = tmp_path / "train.log"
    script = textwrap.dedent(
        f"""
        import logging, torch
        logging.basicConfig(filename={str(log)!r}, level=logging.INFO)
        from saliency_fingerprints.primary import train_primary
        train_primary(
            dataset_path={str(dataset)!r}, architecture="cnn2", seed=0, cfg={training!r},
            weights_out={str(out / "model.safetensors")!r},
            metrics_out={str(out / "metrics.json")!r}, device=torch.device("cpu"), threads=1,
        )
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and "epoch 2/" in log.read_text():
                break
            time.sleep(0.01)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "model.safetensors").exists()
    assert not (out / "metrics.json").exists()
    assert not out.exists() or leftovers(out) == []
