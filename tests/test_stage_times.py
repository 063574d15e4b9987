"""Per-stage wall times read from a Snakemake log."""

from __future__ import annotations

from saliency_fingerprints.stage_times import main, parse_log, render

LOG = """\
Building DAG of jobs...
[Mon Nov 30 19:50:11 2026]
rule train_primary:
    output: results/primaries/cnn2-seed0/model.safetensors
    jobid: 3
    reason: Missing output files
[Mon Nov 30 19:50:12 2026]
rule train_primary:
    jobid: 4
[Mon Nov 30 19:50:20 2026]
Finished jobid: 3 (Rule: train_primary)
[Mon Nov 30 19:50:21 2026]
localrule combine_tables:
    jobid: 0
[Mon Nov 30 19:50:40 2026]
Finished jobid: 4 (Rule: train_primary)
[Mon Nov 30 19:51:01 2026]
Finished jobid: 0 (Rule: combine_tables)
[Mon Nov 30 19:51:02 2026]
rule failed_one:
    jobid: 9
"""


def test_parse_log_spans_and_job_times():
    stages = parse_log(LOG)
    assert [s.rule for s in stages] == ["train_primary", "combine_tables"]  # unfinished: left out
    primary, tables = stages
    assert primary.jobs == 2
    assert primary.span_s == 29  # 19:50:11 -> 19:50:40
    assert primary.job_seconds == 9 + 28
    assert tables.span_s == 40


def test_render_and_cli(tmp_path, capsys):
    table = render(parse_log(LOG), "x.log")
    assert "3 jobs, wall time 50 s" in table
    assert "| train_primary | 2 | 0 s | 29 s | 37 s |" in table
    log = tmp_path / "run.snakemake.log"
    log.write_text(LOG)
    assert main([str(log), "--markdown", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text() == capsys.readouterr().out.replace(
        f"from {log}", f"from {log}"
    )
    assert main([str(tmp_path / "missing.log")]) == 1


def test_a_log_without_jobs_says_why():
    assert render(parse_log("Building DAG of jobs...\nSelect jobs to execute...\n")) == (
        "No finished jobs in the log (a run with --quiet logs none).\n"
    )
