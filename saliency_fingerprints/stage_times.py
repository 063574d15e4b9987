"""Wall time per stage (rule) of a workflow run, read from Snakemake's own log.

Snakemake writes every run's log to ``.snakemake/log/<date>.snakemake.log``: a timestamp line
before each job it starts (``rule NAME:`` / ``localrule NAME:``, then ``jobid: N``) and before each
``Finished jobid: N (Rule: NAME)``. From these, per rule: how many jobs ran, when its first job
started and its last finished (the stage's span), and the jobs' summed run time (above the span
when jobs ran side by side). Timestamps have one-second resolution.

    python -m saliency_fingerprints.stage_times                 # the newest log in .snakemake/log
    python -m saliency_fingerprints.stage_times LOG --markdown stage_times.md
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?(?:checkpoint|rule) (\S+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\S+)\)$")


@dataclass
class Stage:
    rule: str
    starts: dict[int, datetime] = field(default_factory=dict)
    ends: dict[int, datetime] = field(default_factory=dict)

    @property
    def jobs(self) -> int:
        return len(self.ends)

    @property
    def first_start(self) -> datetime:
        return min(self.starts.values())

    @property
    def last_end(self) -> datetime:
        return max(self.ends.values())

    @property
    def span_s(self) -> float:
        return (self.last_end - self.first_start).total_seconds()

    @property
    def job_seconds(self) -> float:
        return sum((self.ends[j] - self.starts[j]).total_seconds() for j in self.ends)


def parse_log(text: str) -> list[Stage]:
    """Stages of the finished jobs in a Snakemake log, in the order their first job started."""
    stages: dict[str, Stage] = {}
    rule_of: dict[int, str] = {}
    stamp, pending = None, None
    for line in text.splitlines():
        if match := STAMP.match(line.strip()):
            stamp = datetime.strptime(" ".join(match.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif (match := START.match(line)) and stamp is not None:
            pending = (match.group(1), stamp)
        elif (match := JOBID.match(line)) and pending is not None:
            rule, started = pending
            job = int(match.group(1))
            stages.setdefault(rule, Stage(rule)).starts[job] = started
            rule_of[job] = rule
            pending = None
        elif (match := FINISHED.match(line.strip())) and stamp is not None:
            job, rule = int(match.group(1)), match.group(2)
            if rule_of.get(job) == rule:
                stages[rule].ends[job] = stamp
    done = [s for s in stages.values() if s.ends]
    return sorted(done, key=lambda s: (s.first_start, s.rule))


def newest_log(directory: str | Path = ".snakemake/log") -> Path:
    logs = sorted(Path(directory).glob("*.snakemake.log"))
    if not logs:
        raise FileNotFoundError(f"{directory}: no Snakemake log; expected a finished run's log")
    return logs[-1]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def render(stages: list[Stage], source: str = "") -> str:
    """A markdown table: per stage its jobs, start offset, span and summed job time."""
    if not stages:
        return "No finished jobs in the log (a run with --quiet logs none).\n"
    t0 = min(s.first_start for s in stages)
    wall = (max(s.last_end for s in stages) - t0).total_seconds()
    lines = [
        f"Stage times{f' from {source}' if source else ''}: {sum(s.jobs for s in stages)} jobs, "
        f"wall time {_clock(wall)} (first job start to last job end).",
        "",
        "| stage (rule) | jobs | starts at | span | summed job time |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in stages:
        lines.append(
            f"| {s.rule} | {s.jobs} | {_clock((s.first_start - t0).total_seconds())} | "
            f"{_clock(s.span_s)} | {_clock(s.job_seconds)} |"
        )
    return "\n".join(lines) + "\n"


def emit(table: str, markdown: str | None) -> None:
    """Print a markdown table, and write it to ``markdown`` when given (the commands here)."""
    print(table, end="")
    if markdown:
        Path(markdown).write_text(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", nargs="?", help="a Snakemake log (default: the newest one)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        path = Path(args.log) if args.log else newest_log()
        text = path.read_text()
    except OSError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    emit(render(parse_log(text), str(path)), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
