#!/usr/bin/env bash
# Certify the baseline on a GPU machine without TensorFlow and without network, in one short run.
#
#   OUT=/some/folder bash benchmarks/device_certify.sh --backend jax|torch|tensorflow [--wheels DIR]
#       [--images N] [--size PX] [--epochs N] [--image-size PX] [--bench-epochs N] [--budget S]
#       [--timeout-scale K] [--python PY]
#   bash benchmarks/device_certify.sh --list-wheels
#
# Installs nothing from the network. Steps, each under a hard timeout, in this order (optional ones
# only while the budget, 330 s by default, allows; the whole run stays under 6 minutes):
#   0. wheels: with --wheels DIR, the carried wheels (--list-wheels: Keras and its small pure-Python
#      needs, and what the package needs that the image lacks, about 5 MB) are installed with
#      --no-index --no-deps into a private folder put on PYTHONPATH. Then
#      benchmarks/device_wheels.py --check BACKEND stops the run (exit 3) naming anything still missing.
#   1. release: a synthetic release of the real size (benchmarks/synthetic_release.py: 6,354 images).
#   2. run1, run2: `cxr-dataset baseline --backend BACKEND` with the full paper recipe (10 epochs,
#      deterministic kernels on), twice: the run-to-run variation.
#   3. bench (optional): benchmarks/baseline_throughput.py on the same release, every installed
#      backend side by side: train step and model alone, images/s.
#   4. summary: benchmarks/certify_summary.py -> summary.json, summary.md (printed at the end).
# $OUT receives at most 6 files: log.txt, summary.json, summary.md, bench.json, run1-certificate.json
# and run2-certificate.json.
#
# --epochs and --image-size override the recipe (the certificates then say so); --timeout-scale
# multiplies every step's timeout and the budget. Local check at a tiny size, on a CPU, in a virtual
# environment without TensorFlow (pip install -e '.[baseline-jax]'):
#   OUT=/tmp/out bash benchmarks/device_certify.sh --backend jax --images 60 --size 256 --epochs 1 \
#     --image-size 32 --bench-epochs 1 --timeout-scale 6 --python /tmp/venv-jax/bin/python
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-${TMPDIR:-/tmp}/device-certify-out}"
PY="${PYTHON:-python3}"
BACKEND="" WHEELS="" IMAGES=6354 SIZE=1024 EPOCHS="" IMAGE_SIZE="" BENCH_EPOCHS=2 BUDGET=330 SCALE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --list-wheels) exec "$PY" "$REPO/benchmarks/device_wheels.py" --list ;;
    --backend) BACKEND="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
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
case "$BACKEND" in
  jax|torch|tensorflow) ;;
  *) echo "device_certify.sh: --backend jax, torch or tensorflow is required" >&2; exit 2 ;;
esac

BUDGET=$((BUDGET * SCALE))
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/device-certify-XXXXXX")"
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 KERAS_BACKEND="$BACKEND"
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

say "device_certify: backend $BACKEND, repo $REPO, out $OUT, work $WORK, images $IMAGES, size $SIZE, epochs ${EPOCHS:-recipe}"
(command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi -L) >>"$LOG" 2>&1

if [ -n "$WHEELS" ]; then
  step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "$WHEELS"/*.whl || { say "BLOCKED: the carried wheels in $WHEELS did not install"; exit 3; }
  export PYTHONPATH="$PYTHONPATH:$WORK/site"  # after the image's own packages: only what it lacks comes from here
fi
if ! step check 120 "$PY" benchmarks/device_wheels.py --check "$BACKEND"; then
  say "BLOCKED: the baseline cannot import on $BACKEND with $PY; carry the wheels named in the log (--list-wheels)"
  exit 3
fi

step release 150 "$PY" benchmarks/synthetic_release.py "$WORK/release" --images "$IMAGES" --size "$SIZE" || exit 4

RECIPE_ARGS=()
[ -n "$EPOCHS" ] && RECIPE_ARGS+=(--epochs "$EPOCHS")
[ -n "$IMAGE_SIZE" ] && RECIPE_ARGS+=(--image-size "$IMAGE_SIZE")
BENCH_ARGS=()
[ -n "$IMAGE_SIZE" ] && BENCH_ARGS+=(--image-size "$IMAGE_SIZE")
baseline() {  # baseline NAME TIMEOUT_S
  local name="$1" limit="$2"
  # the CLI's main() through -c: cli.py has no __main__ block, and the package need not be installed
  step "$name" "$limit" "$PY" -c "from covid19_cxr_dataset.cli import main; main()" baseline --data "$WORK/release" \
    --out "$WORK/$name" --backend "$BACKEND" "${RECIPE_ARGS[@]}"
  [ -f "$WORK/$name/certificate.json" ] && cp "$WORK/$name/certificate.json" "$OUT/$name-certificate.json"
}

baseline run1 150
RUN_S=$(cat "$WORK/run1.wall")
fits run2 "$RUN_S" && baseline run2 150
fits bench $((90 * SCALE)) && step bench 120 "$PY" benchmarks/baseline_throughput.py --release "$WORK/release" \
  --epochs "$BENCH_EPOCHS" "${BENCH_ARGS[@]}" --json "$OUT/bench.json"

step summary 60 "$PY" benchmarks/certify_summary.py "$WORK" "$OUT"
say "device_certify: done in $((SECONDS - START)) s"
cat "$OUT/summary.md" 2>/dev/null
rm -rf "$WORK"
