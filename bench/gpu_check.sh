#!/usr/bin/env bash
# The GPU path, checked on the first machine with one CUDA GPU (issue 8), in at most 8 minutes:
#   1. nvidia-smi, torch and CUDA versions (it stops at once, exit 2, when there is no GPU)
#   2. the venv (`make setup`) and the model packs (`python -m explain fetch`) when missing
#   3. the tests marked cuda (`pytest -m cuda`), under a timeout
#   4. the gpu preset's experiment on e-SNLI at a reduced size, under a timeout
#   5. every figure in ONE file, bench/results/gpu_check.json (+ a short gpu_check.md):
#      test outcomes, per-stage times, examples/s, accuracies, GPU name and memory, peak memory.
# Usage: bash bench/gpu_check.sh        (env: GPU_CHECK_BUDGET seconds, default 480;
#                                        GPU_CHECK_OUT folder for the results, default bench/results)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-480}
RESULTS=${GPU_CHECK_OUT:-$ROOT/bench/results}
PY=$ROOT/.venv/bin/python

die() {
  echo "gpu_check: $*" >&2
  exit 2
}

# --- 1. a GPU, or stop now (nothing installed, nothing written) ------------------------------
command -v nvidia-smi >/dev/null 2>&1 ||
  die "no CUDA GPU here: nvidia-smi is not installed (this check needs one NVIDIA GPU and its driver)"
GPUS=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null) ||
  die "no CUDA GPU here: nvidia-smi cannot talk to a driver"
[ -n "$GPUS" ] || die "no CUDA GPU here: nvidia-smi lists no GPU"
echo "== nvidia-smi"
nvidia-smi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
STAGES=$WORK/stages.tsv
: >"$STAGES"
mkdir -p "$RESULTS"

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed))); }
# A stage's timeout: what is left of the budget, at most $1 s, at least 10 s (never 0: unlimited).
upto() {
  local l
  l=$(left)
  [ "$l" -gt "$1" ] && l=$1
  [ "$l" -lt 10 ] && l=10
  echo "$l"
}
now() { date +%s.%N; }
# One line per stage: name, start, end, exit status, timeout given (s).
stage() { # stage NAME TIMEOUT_S CMD...
  local name=$1 limit=$2 t0 rc
  shift 2
  echo "== $name (timeout ${limit}s, $(elapsed)s used of ${BUDGET}s)"
  t0=$(now)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$t0" "$(now)" "$rc" "$limit" >>"$STAGES"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "gpu_check: $name ran out of its ${limit}s" >&2
  return "$rc"
}

# GPU memory in use, sampled every 0.5 s for the whole check (peaks per stage come from it).
nvidia-smi --query-gpu=timestamp,memory.used,memory.total --format=csv,noheader,nounits \
  -lms 500 >"$WORK/memory.csv" 2>/dev/null &
SAMPLER=$!

report() {
  kill "$SAMPLER" 2>/dev/null
  wait "$SAMPLER" 2>/dev/null
  if [ -x "$PY" ]; then
    "$PY" bench/gpu_check_report.py --work "$WORK" --results "$RESULTS" --budget "$BUDGET" \
      --start "$START" --status "${STATUS:-interrupted}" --exp "$WORK/experiment"
  else
    printf '{"status": "%s", "error": "no venv: make setup failed"}\n' "${STATUS:-failed}" \
      >"$RESULTS/gpu_check.json"
  fi
  echo "gpu_check: ${STATUS:-interrupted} after $(elapsed)s; figures in $RESULTS/gpu_check.json"
}
trap report EXIT

# --- 2. venv and packs ------------------------------------------------------------------------
if ! make -q setup 2>/dev/null; then
  stage setup "$(upto "$BUDGET")" make setup || { STATUS="failed: make setup"; exit 1; }
fi
echo "== versions"
"$PY" - <<'EOF' || { STATUS="failed: torch sees no CUDA GPU"; exit 2; }
import sys

import torch

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA build "
      f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU (CUDA build "
             f"{torch.version.cuda}); a CPU-only wheel? reinstall torch with CUDA in .venv")
p = torch.cuda.get_device_properties(0)
print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
EOF
stage fetch "$(upto 300)" "$PY" -m explain fetch ||
  { STATUS="failed: model packs missing and not fetched (offline? set KDLENS_CACHE)"; exit 1; }

# --- 3. the tests marked cuda -------------------------------------------------------------------
# The tests get up to 4 minutes, leaving the experiment at least 200 s of the budget.
T_TESTS=$(($(left) - 200))
[ "$T_TESTS" -gt 240 ] && T_TESTS=240
[ "$T_TESTS" -lt 60 ] && T_TESTS=60
stage tests "$T_TESTS" "$PY" -m pytest -m cuda -q -rs --junitxml="$WORK/junit.xml" tests/test_cuda.py
TESTS_RC=$?

# --- 4. the gpu preset on e-SNLI, reduced --------------------------------------------------------
# Sizes: up to 512 training and 128 dev examples of the e-SNLI file the project finds (the full
# file under ../shared/datasets, else the bundled 200-record sample); the preset's other settings.
read -r TRAIN DEV < <("$PY" -c "
from distill.data import default_path, load_task
from distill.datasets import datasets_dir
n = len(load_task('esnli', default_path('esnli', datasets_dir())))
dev = min(128, n // 4)
print(min(512, n - dev), dev)" || echo 150 50)
T_EXP=$(($(left) - 45)) # 45 s stay for the kill grace and the report
if [ "$T_EXP" -ge 60 ]; then
  echo "$TRAIN $DEV" >"$WORK/experiment_sizes"
  stage experiment "$T_EXP" "$PY" -m distill experiment --task esnli --preset gpu \
    --train-size "$TRAIN" --dev-size "$DEV" --out "$WORK/experiment"
  EXP_RC=$?
else
  echo "gpu_check: no time left for the experiment (${T_EXP}s)" >&2
  EXP_RC=124
fi

# On a GPU no cuda test may skip: a skip here means the check did not check.
SKIPPED=$(grep -o '<skipped' "$WORK/junit.xml" 2>/dev/null | wc -l)
if [ "$TESTS_RC" = 0 ] && [ "${SKIPPED:-0}" = 0 ] && [ "$EXP_RC" = 0 ]; then
  STATUS=passed
else
  STATUS="failed: tests exit $TESTS_RC (${SKIPPED:-?} skipped), experiment exit $EXP_RC"
fi
[ "$STATUS" = passed ]
