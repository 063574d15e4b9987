#!/usr/bin/env bash
# One GPU session's measurements in one script: the GPU-only tests, the throughput bounds of the
# models (training at a large batch, saliency rows at the best pass size) and the stacked
# engine against them, then the paper preset timed per stage, each stage's rate set against
# those bounds, and the preset's whole planned work at those bounds. Run from the project root on the GPU machine, e.g. through the offline bundle:
#
#   bash .gpu-bundle/run-there.sh bash benchmarks/gpu_session.sh
#
# The device tool runs a command for at most 10 minutes and brings back at most 8 files from
# $OUT, none deeper than two folders. So everything ends within BUDGET_S seconds (570) of the
# start: the tests get at most TEST_S (60), the benchmark BENCH_S (150), the workflow what is
# left less RESERVE_S (30) for the summaries; a run cut short still reports its finished jobs.
# What comes back, in $OUT (default gpu-session/):
#   summary.md       machine, step exits, how busy the GPU was, stage times, stage rates against
#                    the bounds, the whole preset's planned work at the bounds and projected at
#                    the rates measured, the benchmark's tables
#   bench.json       the benchmark's result (benchmarks/run.py)
#   logs.tar.gz      pytest, benchmark, Snakemake (console and .snakemake/log), job logs and
#                    nvidia-smi dmon's utilisation samples
#   results.tar.gz   the run's tables and every job's metrics.json (no maps, no weights)
# Settings by environment: PRESET (config files, default the paper preset with the archive
# source), PRIORITY (outputs, relative to the preset's results directory, that the workflow makes
# first, with all they need; for the default PRESET by default the Grad secondaries of two_cnn2
# and two_miniresnet and one map store of every other method and architecture, 32 of its 285
# jobs, so that a run stopped at the budget has measured every GPU stage, architecture and
# method: the whole preset needs ~45 min of device time even at the bounds, README), GPU_JOBS
# (4: GPU jobs sharing the card; LIST_PRIORITY=1 prints PRIORITY and exits), DEVICE (cuda), BENCH_ARGS (extra
# benchmarks/run.py arguments), PYTHON (python3), COMMIT (the commit measured, for a copy of the
# project without .git: `COMMIT=$(git rev-parse --short HEAD)` where the command is written).
# A dry run of the mechanics on a CPU:
#   DEVICE=cpu PRESET=config/config.yaml BENCH_ARGS=--quick bash benchmarks/gpu_session.sh
set -uo pipefail
t0=$(date +%s)
out=${OUT:-gpu-session}
py=${PYTHON:-python3}
preset=${PRESET:-config/paper.yaml config/overlays/archive.yaml}
if [ -z "${PRESET:-}" ]; then
  maps=saliency/predicted
  priority=${PRIORITY-experiments/two_cnn2/secondaries/grad/original/metrics.json \
experiments/two_miniresnet/secondaries/grad/original/metrics.json \
$maps/smoothgrad/cnn2-seed0.zarr/zarr.json $maps/integrated_gradients/cnn2-seed0.zarr/zarr.json \
$maps/meaningful_perturbation/cnn2-seed0.zarr/zarr.json \
$maps/smoothgrad/miniresnet-seed0.zarr/zarr.json \
$maps/integrated_gradients/miniresnet-seed0.zarr/zarr.json}
else
  priority=${PRIORITY:-}
fi
if [ -n "${LIST_PRIORITY:-}" ]; then  # the targets it would make first, one a line (a test's)
  for target in $priority; do echo "$target"; done
  exit 0
fi
device=${DEVICE:-cuda}
work=$(mktemp -d)
mkdir -p "$out" "$work/logs"
summary="$out/summary.md"

left() { echo $(( ${BUDGET_S:-570} - ($(date +%s) - t0) )); }
# seconds for a step: its own cap, or what is left less a reserve, whichever is smaller (>= 1)
cap() { local want=$1 rest=$(( $(left) - ${2:-0} )); (( rest < want )) && want=$rest
        (( want < 1 )) && want=1; echo "$want"; }
note() { echo "$*" >> "$summary"; }

{ echo "# GPU session, $(date -u '+%Y-%m-%d %H:%M UTC')"; echo; echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -3
  echo "cpus: $(nproc)"
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
  echo "MPS control daemon: $(command -v nvidia-cuda-mps-control || echo 'not found')"
  echo "commit: ${COMMIT:-$(git rev-parse --short HEAD 2> /dev/null || echo unknown)}"
  echo '```'; echo; } > "$summary"

if "$py" -c "import pytest" 2> /dev/null; then
  # the modules with CUDA-only tests (skipped on CPUs): maps, keyed noise and a store job
  # against the CPU's, the graphed stack against training alone, input-agnostic maps
  timeout "$(cap "${TEST_S:-60}" 500)" "$py" -m pytest -q -p no:cacheprovider -rs -k cuda \
    tests/test_engine.py tests/test_stacked.py tests/test_agnostic.py \
    > "$work/logs/tests.log" 2>&1
  note "- GPU tests: exit $? ($(tail -1 "$work/logs/tests.log"))"
else
  note "- GPU tests: pytest not installed here, skipped"
fi

# The bounds: limit (saliency rows/s) and gpu-training (training images/s) of every model the
# CIFAR stages run, and the stacked engine (3 models) against the training bound.
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
timeout "$(cap "${BENCH_S:-150}" 360)" "$py" benchmarks/run.py --device "$device" --repeats 2 \
  --sections limit,gpu-training --models cnn2,minicnn,miniresnet --shapes cifar --bf16 \
  --fast-path benchmarks.gpu_training:stacked_trainer --fast-models 3 ${BENCH_ARGS:-} \
  --results "$work/bench" --markdown "$work/bench.md" > "$work/logs/bench.log" 2>&1
note "- benchmark: exit $?"
bench=$(ls -t "$work"/bench/*.json 2> /dev/null | head -1)
[ -n "$bench" ] && cp "$bench" "$out/bench.json" && bench="$out/bench.json"

# The workflow, from an empty results directory, in what time is left.
read -r -a configs <<< "$preset"
results=$("$py" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['results'])" \
  "${configs[0]}")
case "$results" in
  ""|/*|*..*) echo "gpu_session.sh: results directory '$results' is not inside the project" >&2
              exit 2 ;;
esac
rm -rf "$results" .snakemake/log
dmon=
if command -v nvidia-smi > /dev/null; then  # the share of time a kernel ran, every 5 s
  nvidia-smi dmon -s u -d 5 > "$work/logs/gpu_utilisation.log" 2>&1 &
  dmon=$!
fi
first=()
for target in $priority; do first+=("$results/$target"); done
start=$(date +%s)
timeout --kill-after=20 "$(cap 100000 "${RESERVE_S:-30}")" "$py" -m snakemake \
  --configfile "${configs[@]}" --cores "$(nproc)" --resources gpu="${GPU_JOBS:-4}" \
  ${first[@]:+--prioritize "${first[@]}"} > "$work/logs/paper.log" 2>&1
status=$?
[ -n "$dmon" ] && kill "$dmon" 2> /dev/null
[ -n "$priority" ] && note "- made first (--prioritize, under $results): $priority"
note "- workflow (${preset}): exit $status after $(( $(date +%s) - start )) s$( \
  [ "$status" = 124 ] && echo ', stopped at the time budget: the tables below count finished jobs')"
[ -n "$dmon" ] && note "- GPU busy during the workflow (nvidia-smi dmon, sm %): $(awk \
  '!/^#/ && $2 ~ /^[0-9]+$/ {n++; t+=$2} END {if (n) printf "mean %.0f%% over %d samples", t/n, n;
  else print "no samples"}' "$work/logs/gpu_utilisation.log")"
note ""

snakelog=$(ls -t .snakemake/log/*.snakemake.log 2> /dev/null | head -1)
"$py" -m saliency_fingerprints.stage_times ${snakelog:+"$snakelog"} >> "$summary" 2>&1
note ""
"$py" -m saliency_fingerprints.stage_rates "$results" ${bench:+--bench "$bench"} \
  ${snakelog:+--log "$snakelog"} >> "$summary" 2>&1
note ""
# the whole preset's planned work at the bounds, and projected at the rates of the jobs that ran
"$py" -m saliency_fingerprints.workload --configfile "${configs[@]}" ${bench:+--bench "$bench"} \
  --rates "$results" --concurrency "${GPU_JOBS:-4}" ${snakelog:+--log "$snakelog"} \
  >> "$summary" 2>&1
note ""
[ -f "$work/bench.md" ] && cat "$work/bench.md" >> "$summary"

cp -r .snakemake/log "$work/logs/snakemake" 2> /dev/null
cp -r "$results/logs" "$work/logs/jobs" 2> /dev/null
tar -czf "$out/logs.tar.gz" -C "$work" logs
find "$results" \( -name metrics.json -o -path "$results/tables/*" \) -type f -print0 2> /dev/null \
  | tar -czf "$out/results.tar.gz" --null -T -
rm -rf "$work"
exit "$status"
