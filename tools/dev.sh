#!/usr/bin/env bash
# Set up a virtual environment and run the demo or the tests.
#
#   bash tools/dev.sh demo    # set up, then the official GPT and s2mel against ours, stage by stage (one table)
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

# The official repository's own code line: its modules (tts-webui-index-tts, the official repository packaged, with
# its vendored generation utilities) on the transformers it pins, 4.52.1, in a second environment; the parity tests
# run there too. --no-deps: its own requirements (torchaudio, librosa, modelscope, ...) are not needed.
VENV_REPO=${VENV_REPO:-.venv-tf452}
REPO_LINE_TESTS=(tests/gpt/test_gpt_enable.py tests/s2mel/test_s2mel_fast.py tests/test_integration.py
    tests/test_official_norm.py tests/test_official_attention.py tests/test_official_ffn.py tests/test_cli.py
    tests/test_enable_hostile.py tests/gpt/test_generation_args.py tests/gpt/test_indextts25.py
    tests/e2e/test_infer_v2.py tests/e2e/test_pipeline.py tests/gpt/test_batch_decode.py)
setup_repository_line() {
    [ -x "$VENV_REPO/bin/python" ] || python3 -m venv "$VENV_REPO"
    # omegaconf, json5: what importing the official infer_v2 needs beyond the modules (tests/e2e)
    "$VENV_REPO/bin/python" -m pip install -q --disable-pip-version-check -c constraints-cpu.txt \
        'transformers==4.52.1' 'omegaconf==2.4.0' 'json5==0.17.3' -e '.[test]' \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    "$VENV_REPO/bin/python" -m pip install -q --disable-pip-version-check --no-deps 'tts-webui-index-tts==2.0.1' \
        'indextts25-inference==0.2.0' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

setup() {
    [ -x "$PY" ] || python3 -m venv "$VENV"
    quiet_pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[test,ray]'
    # The official IndexTTS2 module code, a test-only fidelity reference. --no-deps: its own requirements
    # (torchaudio, librosa, ...) are not needed for the modules the tests import.
    quiet_pip install -q --disable-pip-version-check --no-deps 'indextts2-inference==2.1.1'
    # IndexTTS-2.5's codec, length regulator, DiT/CFM and infer_v2_5 (indextts25-inference, derived from the
    # official ee40fa7; its GPT departs from the official one, so the GPT's 2.5 reference is the fixtures under
    # tests/fixtures/official25, made by tools/official25_fixtures.py). Its GPT module imports tiktoken.
    quiet_pip install -q --disable-pip-version-check --no-deps 'indextts25-inference==0.2.0'
    quiet_pip install -q --disable-pip-version-check -c constraints-cpu.txt 'tiktoken==0.14.0' 'omegaconf==2.4.0'
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
    # against the official repository's own code (its transformers 4.52.1), the reference the backend follows
    setup_repository_line
    "$VENV_REPO/bin/python" -m indextts_fast demo "${@:2}"
    ;;
test)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    env -u TRITON_INTERPRET "$PY" -m indextts_fast.aot --max-spill-bytes 0
    echo "== tests: indextts2-inference $("$PY" -c 'import importlib.metadata as m; print(m.version("indextts2-inference"))'), transformers $("$PY" -c 'import transformers; print(transformers.__version__)')"
    "$PY" -m pytest --durations=12 "${@:2}"
    setup_repository_line
    echo "== parity tests on the official repository's code: tts-webui-index-tts 2.0.1, transformers $("$VENV_REPO/bin/python" -c 'import transformers; print(transformers.__version__)')"
    "$VENV_REPO/bin/python" -m pytest --durations=8 "${REPO_LINE_TESTS[@]}" "${@:2}"
    ;;
*)
    echo "usage: bash tools/dev.sh demo|test|setup [pytest args]" >&2
    exit 2
    ;;
esac
