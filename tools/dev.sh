#!/usr/bin/env bash
# Set up a virtual environment and run the demo or the tests.
#
#   bash tools/dev.sh demo    # set up, then every kernel through the dispatch (interpreter on CPU, compiled on CUDA)
#   bash tools/dev.sh test    # set up, then lint, the AOT compile table (sm_86/89/90) and the test suite
#   bash tools/dev.sh setup   # only the environment
#
# The environment is .venv in the repository (override with VENV=...). On the CPU-only development and CI
# machines, constraints-cpu.txt pins the CPU build of torch and the Triton/numpy versions the interpreter needs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
# pip on these machines warns about each local index location it skips; those lines are noise
quiet_pip() { "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

setup() {
    [ -x "$PY" ] || python3 -m venv "$VENV"
    quiet_pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[test]'
    # The official IndexTTS2 module code, a test-only fidelity reference. --no-deps: its own requirements
    # (torchaudio, librosa, ...) are not needed for the modules the tests import.
    quiet_pip install -q --disable-pip-version-check --no-deps 'indextts2-inference==2.1.1'
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        "$PY" - <<'PYEOF'
import sys, torch
if torch.version.cuda is not None:
    sys.exit(f"a CUDA build of torch ({torch.__version__}) is installed on a machine without a GPU; "
             "the CPU build is pinned in constraints-cpu.txt")
PYEOF
    fi
}

case "${1:-}" in
setup)
    setup
    ;;
demo)
    setup
    if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        "$PY" -m indextts_fast.demo
    else
        echo "No GPU: running the Triton kernels in the CPU interpreter at small shapes."
        TRITON_INTERPRET=1 "$PY" -m indextts_fast.demo --small
    fi
    ;;
test)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    env -u TRITON_INTERPRET "$PY" -m indextts_kernels.aot --max-spill-bytes 0
    "$PY" -m pytest "${@:2}"
    ;;
*)
    echo "usage: bash tools/dev.sh demo|test|setup [pytest args]" >&2
    exit 2
    ;;
esac
