#!/usr/bin/env bash
# One GPU session's measurements in one script: the GPU-only tests, the training throughput of
# the stacked engine against the bound, the saliency section, and the paper preset timed per
# stage. Run from the project root on the GPU machine, e.g. through the offline bundle:
#
#   bash .gpu-bundle/run-there.sh bash benchmarks/gpu_session.sh
#
# Logs and tables go to $OUT (default gpu-session/). Time limits (seconds) by environment:
# TEST_S (120), BENCH_S (150), PAPER_S (420); GPU_JOBS (4) GPU jobs share the card in the paper
# run. Each step runs even if an earlier one failed; the exit status is the paper run's.
set -uo pipefail
out=${OUT:-gpu-session}
mkdir -p "$out"
py=${PYTHON:-python3}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$out/machine.txt" 2>&1

if "$py" -c "import pytest" 2> /dev/null; then
  timeout "${TEST_S:-120}" "$py" -m pytest -q -p no:cacheprovider -k "cuda or gpu" \
    tests/test_stacked.py tests/test_perturbation.py tests/test_saliency.py > "$out/tests.log" 2>&1
  echo "tests: exit $?" >> "$out/machine.txt"
else
  echo "tests: pytest not installed here, skipped" >> "$out/machine.txt"
fi

timeout "${BENCH_S:-150}" "$py" benchmarks/run.py --device cuda --repeats 2 \
  --sections gpu-training --bf16 --fast-path benchmarks.gpu_training:stacked_trainer \
  --fast-models 3 --results "$out/bench" --markdown "$out/gpu_training.md" \
  > "$out/bench.log" 2>&1
echo "gpu-training benchmark: exit $?" >> "$out/machine.txt"

start=$(date +%s)
timeout "${PAPER_S:-420}" "$py" -m snakemake --configfile config/paper.yaml \
  config/overlays/archive.yaml --cores "$(nproc)" --resources gpu="${GPU_JOBS:-4}" \
  > "$out/paper.log" 2>&1
status=$?
echo "paper preset: exit $status after $(( $(date +%s) - start )) s" >> "$out/machine.txt"
"$py" -m saliency_fingerprints.stage_times --markdown "$out/stage_times.md" > /dev/null 2>&1
cp -r results/paper/tables "$out/paper_tables" 2> /dev/null
mkdir -p "$out/paper_logs" && cp -r results/paper/logs/. "$out/paper_logs/" 2> /dev/null
exit $status
