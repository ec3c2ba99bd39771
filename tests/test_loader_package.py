"""The loader package: every public name of the former single module importable from indextts_fast.loader
(``from indextts_fast.loader import ...`` and ``L.<name>``), each defined in the module named for its role."""

from __future__ import annotations

import importlib.util

import indextts_fast.loader as L

DEFINED_IN = {
    "errors": ["CheckpointError", "CheckpointWarning", "ConversionInterrupted"],
    "containers": ["read_checkpoint", "detect_kind", "detect_version", "file_sha256"],
    "config": ["model_dims", "load_config", "config_dims", "check_config"],
    "policy": ["gpt_policy"],
    "tables": ["Rule"],
    "remap": [
        "Entry",
        "expand_rules",
        "RemapReport",
        "plan_checkpoint",
        "remap_state_dict",
        "check_checkpoint",
        "inverse_remap",
    ],
    "pack": ["convert_checkpoint", "read_pack", "check_pack"],
    "weights": [
        "FastGPTLayer",
        "FastGPTWeights",
        "FastDiTLayer",
        "FastDiTWeights",
        "FastLengthRegulatorWeights",
        "FastS2MelWeights",
        "load_pack",
    ],
}
CONSTANTS = ["PACK_FORMAT", "PACK_VERSION", "DEFAULT_POLICY", "FLOAT_DTYPES", "PathLike"]


def test_public_names_live_in_their_modules():
    for module, names in DEFINED_IN.items():
        for name in names:
            assert name in L.__all__, name
            assert getattr(L, name).__module__ == f"indextts_fast.loader.{module}", name
    ns: dict = {}
    exec("from indextts_fast.loader import *", ns)
    assert {n for names in DEFINED_IN.values() for n in names} | set(CONSTANTS) <= set(ns)
    assert L.tables.GPT_RULES and L.PACK_FORMAT == "indextts_fast.pack" and L.PACK_VERSION == 1


def test_tables_moved_into_the_package():
    assert importlib.util.find_spec("indextts_fast.checkpoint_tables") is None
    assert L.tables.__name__ == "indextts_fast.loader.tables"
