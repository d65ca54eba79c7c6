#!/usr/bin/env bash
# Every GPU number the docs promise, in one command, on a machine with an NVIDIA GPU:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default OUT_DIR: $OUT, else gpu_check_out)
#
# Run it from the repository root after the README's install. Steps, each with its own time
# limit so the whole check ends in under 10 minutes on one H100:
#   1. env         the device, driver, torch and transformers versions
#   2. pytest_gpu  pytest -m gpu (fused-kernel values and gradients against the fp64 reference)
#   3. bench_step  one training step at the Janus-Pro-1B shape in bf16: sdpa, aia, eager;
#      bench_step_flex the same for sdpa and flex (torch.compile forward + backward)
#   4. bench_train the whole `aia train` step, AIA on vs off, on cuda
#   5. demo        aia demo --quick --device cuda
#   6. routes      the fused intensity routes' self-check verdicts (benchmarks/check_routes.py:
#      flash / memory-efficient / flex against the fp64 math, bf16 / fp16 / fp32, head dims 64 and 128)
#   7. bench_decode decode-time profiling vs plain generation (576 image tokens; answers), batch 1 and 4
# Each step writes OUT_DIR/<step>.txt (and .json where the script has one); OUT_DIR/summary.md
# lists every step with its status and time. Without CUDA it stops before step 2, says so in
# one line and in the summary, and exits 3. Exit status: 0 all passed, 1 a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.md"
PY="${PYTHON:-python}"
failed=0

{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "| step | status | seconds | output |"
  echo "| --- | --- | --- | --- |"
} >"$SUMMARY"

record() {  # name status seconds
  echo "| $1 | $2 | $3 | $1.txt |" >>"$SUMMARY"
  echo "gpu_check: $1: $2 (${3}s)"
}

step() {  # name timeout_s command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS status
  if timeout "$limit" "$@" >"$OUT_DIR/$name.txt" 2>&1; then
    status=passed
  else
    local rc=$?
    status="failed (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))"
    failed=1
  fi
  record "$name" "$status" $((SECONDS - t0))
}

step env 30 "$PY" -c "
import platform, torch, transformers
print('python', platform.python_version(), '| torch', torch.__version__, '| transformers', transformers.__version__)
print('cuda available:', torch.cuda.is_available(), '| cuda', torch.version.cuda)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f'device {i}:', p.name, f'{p.total_memory / 2**30:.1f} GiB')
"
cat "$OUT_DIR/env.txt"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "| cuda | not available: the GPU steps did not run | 0 | env.txt |" >>"$SUMMARY"
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run this on a machine with an NVIDIA GPU" >&2
  exit 3
fi

step pytest_gpu 100 "$PY" -m pytest -q -p no:cacheprovider -m gpu
# flex (torch.compile, forward and backward) apart, so that a compile failure keeps the other numbers
step bench_step 100 "$PY" benchmarks/bench_step.py --preset janus-pro-1b --device cuda --dtype bfloat16 \
  --variants sdpa,aia,eager --warmup 2 --reps 5 --json "$OUT_DIR/bench_step.json"
step bench_step_flex 100 "$PY" benchmarks/bench_step.py --preset janus-pro-1b --device cuda --dtype bfloat16 \
  --variants sdpa,flex --warmup 2 --reps 5 --json "$OUT_DIR/bench_step_flex.json"
step bench_train 60 "$PY" benchmarks/bench_train.py --device cuda --mixed-precision bf16 --json "$OUT_DIR/bench_train.json"
step demo 80 "$PY" -m aia demo --quick --device cuda --out "$OUT_DIR/demo"
step routes 60 "$PY" benchmarks/check_routes.py --device cuda --json "$OUT_DIR/routes.json"
step bench_decode 150 "$PY" benchmarks/bench_decode.py --device cuda --threads 0 --layers 4 --hidden 1024 \
  --repeats 1 --json "$OUT_DIR/bench_decode.json"

echo "gpu_check: summary in $SUMMARY"
cat "$SUMMARY"
exit $failed
