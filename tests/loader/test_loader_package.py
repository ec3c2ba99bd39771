"""The loader's two sides: the runtime package indextts_fast.loader (what enable() needs: key tables, dimensions,
the live remap, the weight dataclasses) and the offline package indextts_fast.checkpoint (containers, config.yaml,
dtype policy, the file remap, fast packs, the tools' CLI). Each public name lives in the module named for its role;
the runtime never imports the offline side, not even through enable()."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import indextts_fast.checkpoint as CK
import indextts_fast.loader as L

PKG = Path(L.__file__).resolve().parents[1]

RUNTIME = {
    "errors": ["CheckpointError", "CheckpointWarning"],
    "dims": ["detect_kind", "detect_version", "model_dims"],
    "tables": ["Rule"],
    "remap": ["Entry", "expand_rules", "RemapReport", "remap_live"],
    "weights": [
        "FastGPTLayer",
        "FastGPTWeights",
        "FastDiTLayer",
        "FastDiTWeights",
        "FastLengthRegulatorWeights",
        "FastS2MelWeights",
        "gpt_weights",
        "dit_weights",
    ],
}
OFFLINE = {
    "containers": ["read_checkpoint", "file_sha256"],
    "config": ["load_config", "config_dims", "check_config"],
    "policy": ["gpt_policy"],
    "remap": ["remap_state_dict", "check_checkpoint", "remap_live", "plan_checkpoint", "inverse_remap"],
    "pack": ["convert_checkpoint", "read_pack", "check_pack", "load_pack", "ConversionInterrupted"],
}


def _check_exports(pkg, defined_in, constants):
    for module, names in defined_in.items():
        for name in names:
            assert name in pkg.__all__, name
            assert getattr(pkg, name).__module__ == f"{pkg.__name__}.{module}", name
    ns: dict = {}
    exec(f"from {pkg.__name__} import *", ns)
    assert {n for names in defined_in.values() for n in names} | set(constants) <= set(ns)


def test_public_names_live_in_their_modules():
    _check_exports(L, RUNTIME, ["FLOAT_DTYPES", "tables"])
    _check_exports(CK, OFFLINE, ["PACK_FORMAT", "PACK_VERSION", "DEFAULT_POLICY", "PathLike", "CheckpointError"])
    assert L.tables.GPT_RULES and CK.PACK_FORMAT == "indextts_fast.pack" and CK.PACK_VERSION == 1
    assert CK.CheckpointError is L.CheckpointError and CK.CheckpointWarning is L.CheckpointWarning


def test_tables_moved_into_the_package():
    assert importlib.util.find_spec("indextts_fast.checkpoint_tables") is None
    assert L.tables.__name__ == "indextts_fast.loader.tables"


def test_the_runtime_package_holds_no_offline_code():
    """No module of indextts_fast.loader imports the offline package, a file reader or a YAML parser; none of the
    offline names is reachable from it."""
    for path in (PKG / "loader").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for m in mods:
                assert "checkpoint" not in m and m.split(".")[0] not in ("yaml", "safetensors", "zipfile"), (path, m)
    for name in ("read_checkpoint", "load_config", "convert_checkpoint", "load_pack", "read_pack", "gpt_policy"):
        assert not hasattr(L, name), name
    assert {p.stem for p in (PKG / "loader").glob("*.py")} == {"__init__", "errors", "tables", "dims", "remap",
                                                                "weights"}  # fmt: skip


_ENABLE = """
import sys
import indextts_fast
loaded = lambda: sorted(m for m in sys.modules if m.startswith("indextts_fast.checkpoint"))
assert loaded() == [], loaded()
from indextts_fast import official
uv, s2 = official.build_models("tiny", 0)
reports = [indextts_fast.enable(uv).report(), indextts_fast.enable(s2).report()]
assert all(" fast " in r for r in reports), reports
assert "indextts_fast.loader.remap" in sys.modules
print(loaded())
"""


def test_import_and_enable_do_not_import_the_offline_side():
    """`import indextts_fast`, then enable() on a live UnifiedVoice and MyModel (the loader's first use, through
    remap_live): indextts_fast.checkpoint stays unimported."""
    res = subprocess.run([sys.executable, "-c", _ENABLE], capture_output=True, text=True, cwd=PKG.parent, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout
