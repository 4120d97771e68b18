#!/usr/bin/env bash
# Certify the baseline on a GPU machine in one short run (issue 17), everything written under $OUT.
#
#   OUT=/some/folder bash benchmarks/device_certify.sh [--skip-install] [--images N] [--size PX]
#       [--epochs N] [--image-size PX] [--bench-epochs N] [--budget S] [--timeout-scale K] [--python PY]
#
# Steps, each under a hard timeout, in this order (optional ones only while the budget allows):
#   1. install: the project (pip install -e .) and TensorFlow's GPU build. Not '.[baseline]': on
#      x86_64 that extra pulls tensorflow-cpu. Installs 'tensorflow[and-cuda]' (TensorFlow plus the
#      CUDA/cuDNN wheels it needs; plain 'tensorflow' if that fails) and matplotlib. Skipped when
#      TensorFlow already imports, or with --skip-install.
#   2. a synthetic release of the real size (benchmarks/synthetic_release.py: 6,354 images).
#   3. run1, run2: `cxr-dataset baseline` for the full paper recipe (10 epochs), resident path with
#      XLA (--jit-compile, which turns op determinism off), twice: the two-run variation.
#   4. bench: benchmarks/baseline_throughput.py on the same release: (a) resident, (b) reference,
#      (c) model alone, and the cached path, images/s side by side.
#   5. mixed (optional): run1 with --mixed-precision: the effect of float16 on the metrics.
#   6. deterministic (optional): resident path without XLA, op determinism on.
#   7. summary: benchmarks/certify_summary.py -> summary.json, summary.md (printed at the end).
# $OUT receives at most 8 files: log.txt, summary.json, summary.md, bench.json and the
# certificate.json of each run as <run>-certificate.json.
#
# --epochs and --image-size override the recipe (the certificates then say so); --timeout-scale
# multiplies every step's timeout and the budget. Local check with a tiny size (CPU):
#   OUT=/tmp/out bash benchmarks/device_certify.sh --skip-install --images 60 --size 256 --epochs 1 \
#     --image-size 32 --bench-epochs 1 --timeout-scale 6 --python /work/venv/bin/python
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-${TMPDIR:-/tmp}/device-certify-out}"
PY="${PYTHON:-python3}"
SKIP_INSTALL=0 IMAGES=6354 SIZE=1024 EPOCHS="" IMAGE_SIZE="" BENCH_EPOCHS=2 BUDGET=330 SCALE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-install) SKIP_INSTALL=1 ;;
    --images) IMAGES="$2"; shift ;;
    --size) SIZE="$2"; shift ;;
    --epochs) EPOCHS="$2"; shift ;;
    --image-size) IMAGE_SIZE="$2"; shift ;;
    --timeout-scale) SCALE="$2"; shift ;;
    --bench-epochs) BENCH_EPOCHS="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --python) PY="$2"; shift ;;
    *) echo "device_certify.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

BUDGET=$((BUDGET * SCALE))
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/device-certify-XXXXXX")"
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
START=$SECONDS
cd "$REPO" || exit 2

say() { echo "[$((SECONDS - START)) s] $*" | tee -a "$LOG"; }

# step NAME TIMEOUT_S COMMAND...: run with a hard timeout, output to the log, wall seconds to $WORK/NAME.wall
step() {
  local name="$1" limit=$(($2 * SCALE)); shift 2
  say "$name: $* (timeout ${limit} s)"
  local began=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "$((SECONDS - began))" >"$WORK/$name.wall"
  say "$name: exit $rc after $((SECONDS - began)) s"
  return $rc
}

# fits NAME ESTIMATE_S: true when the step is expected to end within the budget
fits() {
  if [ $((SECONDS - START + $2)) -le "$BUDGET" ]; then return 0; fi
  say "$1: skipped (about $2 s more would pass the ${BUDGET} s budget)"
  return 1
}

say "device_certify: repo $REPO, out $OUT, work $WORK, images $IMAGES, size $SIZE, epochs ${EPOCHS:-recipe}"
(command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi -L) >>"$LOG" 2>&1

if [ "$SKIP_INSTALL" = 0 ]; then
  if "$PY" -c "import tensorflow" >/dev/null 2>&1; then
    say "install: TensorFlow already importable; installing the project only"
    step install-project 180 "$PY" -m pip install -q -e "$REPO"
  else
    step install-project 180 "$PY" -m pip install -q -e "$REPO" &&
      { step install-tensorflow 300 "$PY" -m pip install -q "tensorflow[and-cuda]>=2.16" "matplotlib>=3.7" ||
        step install-tensorflow-plain 300 "$PY" -m pip install -q "tensorflow>=2.16" "matplotlib>=3.7"; }
  fi
fi
if ! timeout 120 "$PY" -c "
import tensorflow as tf, covid19_cxr_dataset.baseline
print('TensorFlow', tf.__version__, 'GPUs', tf.config.list_physical_devices('GPU'))" >>"$LOG" 2>&1; then
  say "BLOCKED: TensorFlow or the project does not import with $PY (no network, or the install failed); see the log"
  exit 3
fi
tail -n 1 "$LOG"

step release 150 "$PY" benchmarks/synthetic_release.py "$WORK/release" --images "$IMAGES" --size "$SIZE" || exit 4

RECIPE_ARGS=()
[ -n "$EPOCHS" ] && RECIPE_ARGS+=(--epochs "$EPOCHS")
[ -n "$IMAGE_SIZE" ] && RECIPE_ARGS+=(--image-size "$IMAGE_SIZE")
BENCH_ARGS=()
[ -n "$IMAGE_SIZE" ] && BENCH_ARGS+=(--image-size "$IMAGE_SIZE")
baseline() {  # baseline NAME TIMEOUT_S EXTRA_OPTIONS...
  local name="$1" limit="$2"; shift 2
  # the CLI's main() through -c: cli.py has no __main__ block, so `python -m covid19_cxr_dataset.cli` does nothing
  step "$name" "$limit" "$PY" -c "from covid19_cxr_dataset.cli import main; main()" baseline --data "$WORK/release" --out "$WORK/$name" \
    "${RECIPE_ARGS[@]}" "$@"
  [ -f "$WORK/$name/certificate.json" ] && cp "$WORK/$name/certificate.json" "$OUT/$name-certificate.json"
}

baseline run1 150 --pipeline resident --jit-compile
RUN_S=$(cat "$WORK/run1.wall")
fits run2 "$RUN_S" && baseline run2 150 --pipeline resident --jit-compile
fits bench $((120 * SCALE)) && step bench 180 "$PY" benchmarks/baseline_throughput.py --release "$WORK/release" \
  --epochs "$BENCH_EPOCHS" --jit-compile "${BENCH_ARGS[@]}" --json "$OUT/bench.json"
fits mixed "$RUN_S" && baseline mixed 150 --pipeline resident --jit-compile --mixed-precision
fits deterministic "$((RUN_S + 20))" && baseline deterministic 150 --pipeline resident

step summary 60 "$PY" benchmarks/certify_summary.py "$WORK" "$OUT"
say "device_certify: done in $((SECONDS - START)) s"
cat "$OUT/summary.md" 2>/dev/null
rm -rf "$WORK"
