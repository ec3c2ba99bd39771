#!/usr/bin/env bash
# The prepared check for a GPU machine without network access. Installs nothing from the network.
#
#   bash tools/gpu_check.sh          # tests compiled on CUDA (the CUDA-graph tests included), then the end-to-end
#                                    # run (bench/bench_e2e.py), its table printed last: about 8 minutes
#   bash tools/gpu_check.sh bench    # the kernel benchmark suite and its table (bench/, without the e2e run; with
#                                    # bench/bench_decode.py and bench/bench_vocoder.py)
#   bash tools/gpu_check.sh quick    # the same without the torch.compile peers and the official BigVGAN CUDA
#                                    # extension's (they spend minutes compiling)
#   bash tools/gpu_check.sh e2e      # only bench/bench_e2e.py (official eager, official + torch.compile, ours)
#   bash tools/gpu_check.sh tests    # only the tests compiled on CUDA
#   MODEL_DIR=ckpts VOICES=voices bash tools/gpu_check.sh serving
#                                    # bench/bench_serving.py on the real IndexTTS-2 checkpoints (ours vs the official
#                                    # infer behind a lock, 1/4/16/64 clients); needs fastapi, uvicorn, httpx and
#                                    # prometheus-client (pure Python: carry them as wheels in .whl/ too)
# Each mode stays under 10 minutes (a lent machine's limit per command); the default and `bench` together are
# the whole check.
#
# Writes to $OUT when set (the lent machine's return folder), else bench/results/:
#   <card>-<date>.json   pytest-benchmark JSON (device times, GB/s, TFLOP/s, card and versions in extra_info)
#   <card>-<date>.md     the kernel table (tools/bench_table.py)
#   e2e-<card>-<date>.json / .txt   the end-to-end rows and table (bench/bench_e2e.py)
#   tests-<card>-<date>.log
# The fidelity tests and the end-to-end run need the official IndexTTS2 module code; carry it as wheels in .whl/
# (pure Python; the lent machine has torch, triton, transformers and the rest):
#   python3 -m pip download --no-deps -d .whl munch==4.0.0 indextts2-inference==2.1.1 indextts25-inference==0.2.0
# (indextts25-inference: IndexTTS-2.5's codec and s2mel for the end-to-end run's 2.5 rows and tests/s2mel)
# Without .whl/ those tests are skipped and the end-to-end run cannot build its models.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
RES=${OUT:-bench/results}
mkdir -p "$RES"
if ! nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; then
    echo "gpu_check: no NVIDIA GPU here" >&2
    exit 2
fi
CARD=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
STAMP=$(date -u +%Y%m%d-%H%M)
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET INDEXTTS_FAST_BACKEND

# Make indextts_kernels (kernels/indextts_kernels/) and indextts_fast importable without the network.
SITE=/tmp/indextts_fast_site
mkdir -p "$SITE"
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
else
    export INDEXTTS_FAST_ALLOW_MISSING_OFFICIAL=1
fi
DESELECT=()
if ! $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
    ln -sfn "$PWD/kernels/indextts_kernels" "$SITE/indextts_kernels"
    ln -sfn "$PWD/indextts_fast" "$SITE/indextts_fast"
    # without an install there is no distribution metadata to check
    DESELECT=(--deselect tests/test_packaging.py::test_no_top_level_kernels_package_of_ours)
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch, triton, indextts_fast as F; print('torch', torch.__version__, 'triton', triton.__version__, 'backend', F.default_backend())"

MODE=${1:-all}
e2e() {
    echo "== end to end (bench/bench_e2e.py, IndexTTS-2 sizes, random weights)"
    timeout "${1:-540}" $PY -m bench.bench_e2e --json "$RES/e2e-$CARD-$STAMP.json" 2>&1 | tee "$RES/e2e-$CARD-$STAMP.txt"
    return "${PIPESTATUS[0]}"
}
tests() {
    echo "== tests, compiled on CUDA"
    # what runs on CPU tensors whatever the machine (the loader, the CLIs, the argument and hostile-use checks on
    # the torch references) is CI's: left out here, where device time is short
    timeout "${1:-300}" $PY -m pytest tests -q -p no:cacheprovider "${DESELECT[@]}" --ignore=tests/loader \
        --ignore=tests/test_cli.py --ignore=tests/test_enable_hostile.py --ignore=tests/gpt/test_generation_args.py \
        --ignore=tests/e2e --ignore=tests/serving 2>&1 \
        | tee "$RES/tests-$CARD-$STAMP.log" | tail -25
}
bench() {
    echo "== kernel benchmarks"
    KSEL=(-k "not end_to_end")  # the end-to-end run has its own mode (e2e): it takes minutes
    [ "$MODE" = quick ] && KSEL=(-k "not compile and not end_to_end and not cuda-ext")
    timeout 420 $PY -m pytest bench -m gpu -q -p no:cacheprovider --benchmark-enable \
        --benchmark-columns=median,rounds --benchmark-json "$RES/$CARD-$STAMP.json" "${KSEL[@]}" 2>&1 | tail -15
    echo "== summary ($CARD)"
    $PY tools/bench_table.py "$RES/$CARD-$STAMP.json" | tee "$RES/$CARD-$STAMP.md"
}
serving() {
    if [ -z "${MODEL_DIR:-}" ] || [ -z "${VOICES:-}" ]; then
        echo "gpu_check serving: set MODEL_DIR (IndexTTS-2 checkpoints) and VOICES (reference audio files)" >&2
        return 2
    fi
    echo "== serving (bench/bench_serving.py, $MODEL_DIR)"
    timeout 560 $PY -m bench.bench_serving --model-dir "$MODEL_DIR" --voices "$VOICES" --limit-s 60 \
        --json "$RES/serving-$CARD-$STAMP.json" 2>&1 | tee "$RES/serving-$CARD-$STAMP.txt"
}
case "$MODE" in
all)
    tests 240
    e2e 300
    echo "== summary ($CARD)"
    tail -n +1 "$RES/e2e-$CARD-$STAMP.txt" | grep -E "ms/token|ms/step|RTF|first synthesis|peak|mel max" || true
    grep -E "passed|failed" "$RES/tests-$CARD-$STAMP.log" | tail -1
    ;;
e2e) e2e ;;
tests) tests ;;
bench | quick) bench ;;
serving) serving ;;
*)
    echo "usage: bash tools/gpu_check.sh [all|tests|e2e|bench|quick|serving]" >&2
    exit 2
    ;;
esac
