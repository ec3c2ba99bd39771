#!/usr/bin/env bash
# Profile the demo's steady state with Nsight Systems and print the kernel summary.
#
#   bash tools/profile.sh                 # stages greedy,cfm (STAGES=... to change), full size on a GPU
#   bash tools/profile.sh --model-dir DIR # the real weights
#
# Only our timed runs are captured (the demo's --profile puts each, after a warm-up call, inside a cudaProfilerApi
# range: nsys --capture-range=cudaProfilerApi), with the NVTX ranges gpt.prefill, gpt.decode, gpt.latent, s2mel.cfm
# and one per fused op (INDEXTTS_FAST_NVTX=ops). Where nsys cannot write a report (some containers refuse its
# collection), it falls back to Nsight Compute, `ncu --nvtx` over the same profiler range, and says so.
# Writes to $OUT when set, else bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
RES=${OUT:-bench/results}
STAGES=${STAGES:-greedy,cfm}
STAMP=$(date -u +%Y%m%d-%H%M)
mkdir -p "$RES"
export INDEXTTS_FAST_NVTX=${INDEXTTS_FAST_NVTX:-ops}
unset TRITON_INTERPRET
if ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "profile: no CUDA device here; profiling needs a GPU" >&2
    exit 2
fi
DEMO=($PY -m indextts_fast demo --profile --stages "$STAGES" "$@")
REP="$RES/profile-$STAMP"
if command -v nsys >/dev/null 2>&1; then
    nsys profile --capture-range=cudaProfilerApi --capture-range-end=repeat -t cuda,nvtx --force-overwrite true \
        -o "$REP" "${DEMO[@]}"
    if [ -s "$REP.nsys-rep" ]; then
        nsys stats --force-export=true --report cuda_gpu_kern_sum,nvtx_sum "$REP.nsys-rep" | tee "$REP.txt"
        exit 0
    fi
    echo "profile: nsys wrote no report here; falling back to ncu --nvtx"
else
    echo "profile: nsys is not installed; falling back to ncu --nvtx"
fi
if ! command -v ncu >/dev/null 2>&1; then
    echo "profile: neither nsys nor ncu is installed (both ship with the CUDA toolkit)" >&2
    exit 2
fi
# Nsight Compute replays each kernel: keep the launch count modest (-c); per-kernel summary of the captured range
ncu --nvtx --profile-from-start off -c "${NCU_KERNELS:-400}" --print-summary per-kernel "${DEMO[@]}" | tee "$REP-ncu.txt"
