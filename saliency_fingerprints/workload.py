"""The work a config asks of its GPU stages, counted before anything runs.

Per job, in the units of :mod:`~saliency_fingerprints.stage_rates` (which measures what a finished
run did):

* ``train_primary``: training images = training-subset size x epochs, per primary (a random-label
  copy of the sanity checks: up to its epoch cap, as it stops once it has memorised its labels);
* ``compute_saliency``: gradient rows = maps x the method's gradient evaluations per map, per
  store (predicted-class and true-class stores apart);
* ``train_secondary``: training images = fitting maps x epochs x learning-rate candidates, summed
  over the job's replicates: an upper bound, as early stopping (``patience``) ends most sooner.

The counts come from the jobs' own functions (a primary's training subset, the images that get
maps, the secondary's image-disjoint splits, each method's gradient evaluations), so they are
exact where a job's work is fixed. Not counted: the sanity checks, the backdoor experiment and
cross-evaluation (forward passes only). Given a ``benchmarks/run.py`` result (``--bench``), each
stage's work is also set against the bound of its model (:func:`.stage_rates.bounds`): the
least time it can take on that device, whatever the jobs' order or sharing.

    python -m saliency_fingerprints.workload --configfile config/paper.yaml \\
        config/overlays/archive.yaml --images 25000 10000 --shape 3x32x32 [--bench X.json]

``--rates RESULTS [--concurrency N] [--log LOG]`` adds what each stage's planned work would take at
the rates of a run's finished jobs (:mod:`~saliency_fingerprints.stage_rates`), with each job's
start-up as that run's log shows it, N at a time: a projection of a whole run from the jobs a
short one finished (``benchmarks/gpu_session.sh`` has one GPU session
for a preset that takes far longer).

``--experiments A B`` counts only those experiments' jobs (e.g. the paper's Table 1 without the
studies and twins). Without ``--images``/``--shape`` the run's dataset store
(``<results>/data/<name>.zarr``) gives the split sizes and the image shape.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .configuration import (
    Primary,
    deep_merge,
    expand_studies,
    experiment_primaries,
    experiment_replicates,
    experiment_secondary,
    experiment_target,
    random_label_epochs,
    sanity_primaries,
    validate_config,
)
from .datasets import open_dataset
from .errors import ConfigError, DataError
from .stage_rates import STAGES, Job, bounds, collect, format_count, rates, read_json
from .stage_times import emit, parse_log


def load_config(paths: list[str]) -> dict:
    """The config Snakemake would run with these ``--configfile`` files (later ones update
    earlier ones key by key), validated, its studies expanded into experiments."""
    config: dict = {}
    for path in paths:
        try:
            config = deep_merge(config, yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read the config ({err})") from None
    validate_config(config)
    expand_studies(config)
    return config


def store_sizes(config: Mapping) -> tuple[int, int, tuple[int, int, int]] | None:
    """``(train images, test images, (C, H, W))`` from the run's dataset store, if it exists."""
    store = Path(config["results"]) / "data" / f"{config['dataset']['name']}.zarr"
    try:
        ds, info = open_dataset(store)
    except DataError:
        return None
    split = ds["split"].values
    shape = (info.channels, info.image_size, info.image_size)
    return int((split == "train").sum()), int((split == "test").sum()), shape


class Planner:
    """Counts each job's work for ``config`` on a dataset of ``n_train`` + ``n_test`` images of
    ``shape`` (C, H, W)."""

    def __init__(self, config: Mapping, n_train: int, n_test: int, shape: tuple) -> None:
        self.config, self.shape = config, tuple(shape)
        self.split = np.array(["train"] * n_train + ["test"] * n_test)
        self.key = "x".join(map(str, self.shape))

    def model(self, architecture: str) -> str:
        return f"{architecture} {self.key}"

    def training_images(self, primary: Primary) -> int:
        from .primary import training_subset

        ids = np.flatnonzero(self.split == "train")
        data = primary.seed if primary.data_seed is None else primary.data_seed
        return len(training_subset(ids, self.config["primary_training"]["train_fraction"], data))

    def primary(self, primary: Primary, epochs: int | None = None, label: str = "") -> Job:
        if epochs is None:
            epochs = primary.epochs
        if epochs is None:
            epochs = int(self.config["primary_training"]["epochs"])
        work = self.training_images(primary) * epochs
        return Job(
            "train_primary", self.model(primary.architecture), work, 0.0, primary.name + label
        )

    @functools.cached_property
    def map_ids(self) -> np.ndarray:
        """The images that get maps (the same for every store)."""
        from .saliency.job import select_images

        s = self.config["saliency"]
        return select_images(self.split, s["images"], s.get("max_images"), int(s["seed"]))

    @functools.cache  # noqa: B019 - one planner per command; a handful of (method, arch) keys
    def gradient_evaluations(self, method: str, architecture: str) -> int:
        from .models import build_model
        from .saliency import build_method

        model = build_model(architecture, self.shape[0], self.shape[1], 10)
        params = self.config["methods"].get(method) or {}
        return int(build_method(method, model, params, 1).gradient_evaluations)

    def store(self, target: str, method: str, primary: Primary) -> Job:
        k = self.gradient_evaluations(method, primary.architecture)
        work = len(self.map_ids) * k
        name = f"{target}/{method}/{primary.name}"
        return Job("compute_saliency", self.model(primary.architecture), work, 0.0, name, method)

    def fitting_images(self, cfg: Mapping) -> int:
        from .secondary import fit_subset, image_disjoint_split, validation_split

        seed = int(cfg["split_seed"])
        train, _ = image_disjoint_split(self.map_ids, float(cfg["test_fraction"]), seed)
        fit, _ = validation_split(train, float(cfg["validation_fraction"]), seed)
        return len(fit_subset(fit, float(cfg["fit_fraction"]), seed))

    def secondary(self, experiment: str, method: str, variant: str) -> Job:
        cfg = experiment_secondary(self.config, experiment)
        rates = cfg["learning_rate"]
        candidates = len(rates) if isinstance(rates, list) else 1
        per_primary = self.fitting_images(cfg) * int(cfg["epochs"]) * candidates
        work = sum(
            per_primary * len(experiment_primaries(self.config, experiment, r))
            for r in experiment_replicates(self.config, experiment)
        )
        channels = self.shape[0] if cfg["preprocess"]["reduce"] == "none" else 1
        model = f"{cfg['architecture']} {channels}x{self.shape[1]}x{self.shape[2]}"
        return Job("train_secondary", model, work, 0.0, f"{experiment}/{method}/{variant}")

    def jobs(self, experiments: list[str] | None = None) -> list[Job]:
        """Every primary, map store and secondary job of the config, each once; with
        ``experiments``, only those experiments' jobs (no sanity checks)."""
        config = self.config
        known = list(config["experiments"])
        for name in experiments or []:
            if name not in known:
                raise ConfigError(
                    f"--experiments: no experiment {name!r}; expected some of: {', '.join(known)}"
                )
        primaries: dict[str, Job] = {}
        stores: dict[str, Job] = {}
        secondaries = []
        for experiment in experiments or known:
            spec = config["experiments"][experiment]
            target = experiment_target(config, experiment)
            for r in experiment_replicates(config, experiment):
                for p in experiment_primaries(config, experiment, r):
                    primaries.setdefault(p.name, self.primary(p))
                    for method in spec["methods"]:
                        key = f"{target}/{method}/{p.name}"
                        if key not in stores:
                            stores[key] = self.store(target, method, p)
            for method in spec["methods"]:
                for variant in spec.get("variants") or ["original"]:
                    secondaries.append(self.secondary(experiment, method, variant))
        if experiments is not None:
            return [*primaries.values(), *stores.values(), *secondaries]
        sanity = config.get("sanity_checks") or {}
        for p in sanity_primaries(config):
            primaries.setdefault(p.name, self.primary(p))
        random_labels = sanity.get("random_labels") or {}
        if sanity_primaries(config) and random_labels.get("enabled", True):
            for p in sanity_primaries(config):
                job = self.primary(p, random_label_epochs(config, p.architecture), "-random_labels")
                primaries[job.path] = job
        return [*primaries.values(), *stores.values(), *secondaries]


# the Snakemake rules whose jobs :func:`.stage_rates.collect` counts in each stage
LOG_RULES = {
    "train_primary": ("train_primary", "train_random_label_primary", "train_backdoor_primary"),
    "compute_saliency": ("compute_saliency",),
    "train_secondary": ("train_secondary",),
}


@dataclass(frozen=True)
class Projection:
    """What a run's finished jobs measured, to project a whole plan from: per (stage, model,
    method) the work per second of job time (:func:`.stage_rates.rates`), per stage the seconds
    a job took beyond its own timing (start-up, imports, writing: its span in the Snakemake log
    less its provenance's ``wall_time_s``; empty without a log), and how many jobs ran at a
    time."""

    rates: dict[tuple[str, str, str], float]
    overheads: dict[str, float] = field(default_factory=dict)
    source: str = ""
    concurrency: int = 1

    @classmethod
    def measure(
        cls, results: str | Path, log: str | Path | None = None, concurrency: int = 1
    ) -> Projection:
        if concurrency < 1:
            raise ConfigError(f"--concurrency: expected at least 1, got {concurrency}")
        done = collect(results)
        measured = {r.key: r.rate for r in rates(done) if r.seconds > 0}
        overheads = {}
        if log is not None:
            logged = {s.rule: s for s in parse_log(Path(log).read_text())}
            for stage, rules in LOG_RULES.items():
                own = [j.seconds for j in done if j.stage == stage]
                found = [logged[rule] for rule in rules if rule in logged]
                # only where the log and the results hold the same jobs (a fresh results
                # directory); the log's times have one-second resolution
                if own and sum(s.jobs for s in found) == len(own):
                    spare = sum(s.job_seconds for s in found) - sum(own)
                    overheads[stage] = max(spare, 0.0) / len(own)
        return cls(measured, overheads, str(results), concurrency)

    def job_seconds(self, row) -> float | None:
        """A plan's row (:class:`.stage_rates.Rate`) at the measured rate, with its jobs'
        overhead; None where no job of its stage, model and method was measured (a method's rows
        can cost more than another's: no rate stands in for another method's)."""
        rate = self.rates.get(row.key)
        if not rate:
            return None
        return row.work / rate + row.jobs * self.overheads.get(row.stage, 0.0)

    def summary(self, table) -> str:
        job_s = {stage: 0.0 for stage in STAGES}
        for row in table:
            job_s[row.stage] += self.job_seconds(row) or 0.0
        total, n = sum(job_s.values()), self.concurrency
        per_stage = ", ".join(f"{st} {sec / n:,.0f} s" for st, sec in job_s.items() if sec)
        overheads = ", ".join(f"{st} {sec:,.1f} s" for st, sec in self.overheads.items())
        missing = ", ".join(
            " ".join(filter(None, row.key)) for row in table if self.job_seconds(row) is None
        )
        return (
            f"At the rates measured{f' in {self.source}' if self.source else ''}: {total:,.0f} s "
            f"of job time; with {n} job{'s' if n > 1 else ''} at a time about {total / n:,.0f} s "
            f"of wall time ({per_stage}). A projection, not a measurement: it holds only if the "
            "whole run keeps the device as loaded as the measured jobs did"
            + (
                f"; it includes each job's time outside its own timing, per job: {overheads}"
                if overheads
                else "; it leaves out each job's start-up (no log given)"
            )
            + "; it leaves out the CPU-only jobs"
            + (f"; not measured, so left out: {missing}." if missing else ".")
        )


def render(
    jobs: list[Job],
    bound_of: dict,
    source: str = "",
    bench: str = "",
    projection: Projection | None = None,
) -> str:
    """Per (stage, model): jobs and work, and with bounds the seconds at the bound; totals; with
    a :class:`Projection`, each row's job time at the measured rates and the whole plan's wall
    time at its concurrency."""
    head = "| stage | model | method | jobs | work | bound (/s) | seconds at the bound |"
    rule = "|---|---|---|---:|---:|---:|---:|"
    if projection:
        head += " measured (/s of job time) | projected job seconds |"
        rule += "---:|---:|"
    lines = [
        f"Planned work{f' of {source}' if source else ''}"
        f"{f', bounds from {bench}' if bench else ''} (train_secondary: all epochs, an upper "
        "bound; train_primary of random-label copies: their epoch cap).",
        "",
        head,
        rule,
    ]
    table = rates(jobs, bound_of)
    for r in table:
        seconds = None if not r.bound else r.work / r.bound
        row = (
            f"| {r.stage} | {r.model} | {r.method or '-'} | {r.jobs} | "
            f"{format_count(r.work)} {r.unit} | {'-' if not r.bound else format_count(r.bound)} | "
            f"{'-' if seconds is None else f'{seconds:,.0f}'} |"
        )
        if projection:
            job_s = projection.job_seconds(r)
            rate = projection.rates.get(r.key)
            row += " - | - |" if job_s is None else f" {format_count(rate)} | {job_s:,.0f} |"
        lines.append(row)
    bounded = [r for r in table if r.bound]
    if bounded:
        total = sum(r.work / r.bound for r in bounded)
        partial = " for the rows with a bound (the others have none)"
        lines += [
            "",
            f"At the bounds: {total:,.0f} s of device time"
            f"{'' if len(bounded) == len(table) else partial}.",
        ]
    if projection and any(projection.job_seconds(r) is not None for r in table):
        lines += ["", projection.summary(table)]
    return "\n".join(lines) + "\n"


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--shape {text!r}: expected CxHxW, e.g. 3x32x32") from None
    return c, h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="+", default=["config/config.yaml"])
    parser.add_argument("--images", nargs=2, type=int, metavar=("TRAIN", "TEST"))
    parser.add_argument("--shape", help="image shape CxHxW (default: the dataset store's)")
    parser.add_argument(
        "--experiments", nargs="+", help="count only these experiments (no sanity checks)"
    )
    parser.add_argument("--bench", help="a benchmarks/run.py result JSON (the bounds)")
    parser.add_argument(
        "--rates",
        metavar="RESULTS",
        help="a run's results directory: project the plan at the "
        "rates its finished jobs had (stage_rates)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="jobs at a time in that run (default 1)"
    )
    parser.add_argument(
        "--log", help="that run's Snakemake log: adds each job's time outside its own timing"
    )
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.configfile)
        found = store_sizes(config)
        if args.images is None or args.shape is None:
            if found is None:
                raise ConfigError(
                    f"no dataset store under {config['results']}/data: pass --images TRAIN TEST "
                    "and --shape CxHxW (the CIFAR-10 archive: 25000 10000, 3x32x32)"
                )
        n_train, n_test = args.images if args.images else found[:2]
        shape = parse_shape(args.shape) if args.shape else found[2]
        jobs = Planner(config, n_train, n_test, shape).jobs(args.experiments)
        bench = read_json(Path(args.bench)) if args.bench else {}
        projection = (
            Projection.measure(args.rates, args.log, args.concurrency) if args.rates else None
        )
    except (ConfigError, OSError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    source = " ".join(args.configfile)
    if args.experiments:
        source += f" (experiments {', '.join(args.experiments)})"
    emit(render(jobs, bounds(bench), source, args.bench or "", projection), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
