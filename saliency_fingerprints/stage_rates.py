"""How fast each GPU stage of a finished run worked, against the throughput bound of its model.

Every training job and map store records what it did and for how long (its provenance's
``wall_time_s``: from the stage's start to its finish, Python's imports excluded). From these,
per stage and model:

* ``train_primary``: training images = training-set size x epochs run, per primary (a
  study's untrained primary, epoch 0 only, did none);
* ``compute_saliency``: gradient rows = maps x gradient evaluations per map, per store;
* ``train_secondary``: training images = fitting maps x epochs run, summed over the job's
  replicates and learning-rate candidates (a model that stopped early counts only its own
  epochs, even where a stack computed on beside it);

and the rate = work / summed job time (map stores per method too: one method's rows can cost more
than another's, Meaningful Perturbation's more than Grad's): what one job achieved per second of
its own time, evaluation, data loading and writing included. Given a ``benchmarks/run.py``
result (``--bench``), each rate is set against the bound of the same model and input shape:
the training bound (one model at a large batch, fp32: its ``gpu-training`` section) or the
saliency limit (forward + backward rows per second at the best pass size: its ``limit``
section). On a GPU both are wall clock; the CPU suite times by CPU time of one thread, so on a
CPU the fraction is a rough guide.

Jobs that shared a device ran slower each than alone; with a Snakemake log (``--log``), each
stage also gets its span (first start to last end, :mod:`~saliency_fingerprints.stage_times`) and
its work per second of span: the device's aggregate rate for that stage where it had the device
to itself, a lower bound of it where other stages ran in the same span.

    python -m saliency_fingerprints.stage_rates results/paper --bench benchmarks/results/X.json
    python -m saliency_fingerprints.stage_rates results --markdown rates.md --log LOG
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .datasets import open_dataset
from .errors import DataError
from .stage_times import emit, parse_log
from .store import open_store

STAGES = {
    "train_primary": "training images",
    "compute_saliency": "gradient rows",
    "train_secondary": "training images",
}


@dataclass(frozen=True)
class Job:
    """One job: its stage, the model it runs (``"<arch> <C>x<H>x<W>"``), its work in the
    stage's unit, its own time (0 for a job :mod:`~saliency_fingerprints.workload` plans), its
    output (a path, or the job's name in a plan) and, for a map store, its method."""

    stage: str
    model: str
    work: float
    seconds: float
    path: str
    method: str = ""


def _shape(channels: int, height: int, width: int | None = None) -> str:
    return f"{channels}x{height}x{height if width is None else width}"


def read_json(path: Path) -> dict:
    """A JSON record; a file that is not one: ValueError naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable metrics ({err})") from err


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A record without the fields a finished job writes: one line naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: not a finished job's record ({err!r} missing or malformed)"
        ) from err


def _attrs(store: Path) -> dict | None:
    """A map store's attributes (None: not a readable store of maps)."""
    try:
        ds = open_store(store)
    except DataError:
        return None
    return dict(ds.attrs) if "maps" in ds.variables else None


def image_shape(results: Path) -> str | None:
    """The dataset's image shape (``CxHxW``) from the run's dataset store."""
    for store in sorted((results / "data").glob("*.zarr")):
        try:
            _, info = open_dataset(store)
        except DataError:
            continue
        return _shape(info.channels, info.image_size)
    return None


def primary_jobs(results: Path, shape: str | None) -> Iterator[Job]:
    for path in sorted(results.glob("**/primaries/*/metrics.json")):
        m = read_json(path)
        prov = m.get("provenance", {})
        if prov.get("stage") != "train_primary":
            continue
        with _reading(path):
            job = Job(
                "train_primary",
                f"{m['architecture']} {shape or '?'}",
                float(m["n_train"] * sum(r["epoch"] > 0 for r in m["history"])),
                float(prov["wall_time_s"]),
                str(path),
            )
        yield job


def saliency_jobs(results: Path, architectures: dict[str, str], shape: str | None) -> Iterator[Job]:
    for store in sorted((results / "saliency").glob("*/*/*.zarr")):
        attrs = _attrs(store)
        if attrs is None:
            continue
        prov = attrs.get("provenance")
        prov = json.loads(prov) if isinstance(prov, str) else prov or {}
        if prov.get("stage") != "compute_saliency":
            continue
        primary = prov.get("config", {}).get("primary", store.stem)
        with _reading(store):
            job = Job(
                "compute_saliency",
                f"{architectures.get(primary, '?')} {shape or '?'}",
                float(prov["n_maps"] * prov["gradient_evaluations_per_map"]),
                float(prov["wall_time_s"]),
                str(store),
                store.parent.name,
            )
        yield job


def _replicate_work(replicate: dict) -> float:
    candidates = replicate.get("learning_rate_search") or [replicate]
    return float(sum(replicate["n_fit"] * c["epochs_run"] for c in candidates))


def secondary_jobs(results: Path) -> Iterator[Job]:
    for path in sorted(results.glob("experiments/*/secondaries/*/*/metrics.json")):
        m = read_json(path)
        prov = m.get("provenance", {})
        if prov.get("stage") != "train_secondary" or not m.get("replicates"):
            continue
        with _reading(path):
            channels, side = m["replicates"][0]["map_shape"]
            job = Job(
                "train_secondary",
                f"{prov['config']['architecture']} {_shape(channels, side)}",
                sum(_replicate_work(r) for r in m["replicates"]),
                float(prov["wall_time_s"]),
                str(path),
            )
        yield job


def collect(results: str | Path) -> list[Job]:
    """Every finished training job and map store under ``results``."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"{results}: no such results directory")
    shape = image_shape(results)
    primaries = list(primary_jobs(results, shape))
    architectures = {Path(j.path).parent.name: j.model.split()[0] for j in primaries}
    return [*primaries, *saliency_jobs(results, architectures, shape), *secondary_jobs(results)]


def bounds(bench: dict) -> dict[tuple[str, str], float]:
    """``(stage unit, model) -> bound`` from a ``benchmarks/run.py`` result: the training bound
    (its ``gpu_training`` key, fp32) and the saliency limit (its ``limit`` key)."""
    out = {}
    for model, case in (bench.get("gpu_training") or {}).items():
        bound = case.get("paths", {}).get("bound")
        if bound:
            out[("training images", model)] = float(bound["images_per_s"]["median"])
    for model, limit in (bench.get("limit") or {}).items():
        out[("gradient rows", model)] = float(limit["rows_per_s"]["median"])
    return out


@dataclass
class Rate:
    stage: str
    model: str
    method: str
    jobs: int
    work: float
    seconds: float
    bound: float | None

    @property
    def key(self) -> tuple[str, str, str]:
        """``(stage, model, method)``: what the jobs of one row share."""
        return self.stage, self.model, self.method

    @property
    def unit(self) -> str:
        return STAGES[self.stage]

    @property
    def rate(self) -> float:
        return self.work / self.seconds if self.seconds > 0 else float("nan")

    @property
    def fraction(self) -> float | None:
        return None if not self.bound else self.rate / self.bound


def rates(jobs: list[Job], bound_of: dict[tuple[str, str], float] | None = None) -> list[Rate]:
    """Per (stage, model, method): jobs, work, summed job time, and the bound of the model where
    known; stages in pipeline order."""
    bound_of = bound_of or {}
    grouped: dict[tuple[str, str, str], Rate] = {}
    for job in jobs:
        key = (job.stage, job.model, job.method)
        if key not in grouped:
            grouped[key] = Rate(*key, 0, 0.0, 0.0, None)
            grouped[key].bound = bound_of.get((STAGES[job.stage], job.model))
        group = grouped[key]
        group.jobs += 1
        group.work += job.work
        group.seconds += job.seconds
    order = list(STAGES)
    return sorted(grouped.values(), key=lambda r: (order.index(r.stage), r.model, r.method))


def format_count(value: float) -> str:
    """``1,234`` or, from a million, ``1.23 M``."""
    if value >= 1e6:
        return f"{value / 1e6:,.2f} M"
    return f"{value:,.0f}"


def render(
    table: list[Rate], source: str = "", spans: dict[str, float] | None = None, bench: str = ""
) -> str:
    """A markdown table of :func:`rates`; with ``spans`` (stage -> seconds of span), each stage's
    aggregate rate over its span below it."""
    if not table:
        return "No finished training jobs or map stores.\n"
    lines = [
        f"Stage rates{f' of {source}' if source else ''}"
        f"{f', bounds from {bench}' if bench else ''}: work per second of job time "
        "(each job's own wall time, start-up and evaluation included).",
        "",
        "| stage | model | method | jobs | work | job time | rate (/s) | bound (/s) "
        "| of the bound |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        bound = "-" if r.bound is None else format_count(r.bound)
        fraction = "-" if r.fraction is None else f"{r.fraction:.2f}"
        lines.append(
            f"| {r.stage} | {r.model} | {r.method or '-'} | {r.jobs} | "
            f"{format_count(r.work)} {r.unit} | {r.seconds:,.1f} s | {format_count(r.rate)} | "
            f"{bound} | {fraction} |"
        )
    if spans:
        lines += [
            "",
            "Per second of each stage's span (first job start to last job end; other stages may "
            "have run in it):",
            "",
        ]
        for stage in STAGES:
            work = sum(r.work for r in table if r.stage == stage)
            if stage in spans and spans[stage] > 0 and work:
                lines.append(
                    f"- {stage}: {format_count(work / spans[stage])} {STAGES[stage]}/s over "
                    f"{spans[stage]:,.0f} s"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default="results", help="a results directory")
    parser.add_argument("--bench", help="a benchmarks/run.py result JSON (the bounds)")
    parser.add_argument("--log", help="the run's Snakemake log (adds each stage's span)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        jobs = collect(args.results)
        bench = read_json(Path(args.bench)) if args.bench else {}
        spans = None
        if args.log:
            spans = {s.rule: s.span_s for s in parse_log(Path(args.log).read_text())}
    except (OSError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    emit(render(rates(jobs, bounds(bench)), args.results, spans, args.bench or ""), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
