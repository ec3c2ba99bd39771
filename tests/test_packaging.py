"""The folder kernels/indextts_kernels/ ships as the import package indextts_kernels; nothing of ours claims the
name `kernels` (Hugging Face's package, which transformers 5.25+ depends on and imports)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import indextts_fast
import indextts_kernels

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "kernels" / "indextts_kernels"


def test_indextts_kernels_is_the_kernels_folder():
    assert Path(indextts_kernels.__file__).resolve().parent == KERNELS


def test_no_top_level_kernels_package_of_ours(tmp_path):
    """Installed, the distribution provides indextts_kernels and indextts_fast, and never the name `kernels`
    (Hugging Face's `kernels` package, which transformers detects by import name). Checked from a directory
    outside the repository, where the source folder is not on sys.path."""
    code = (
        "import importlib.util, importlib.metadata as md, json\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "pd = md.packages_distributions()\n"
        "print(json.dumps([spec.origin if spec else None, pd.get('indextts_kernels'), pd.get('kernels')]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    origin, ours, kernels_dist = json.loads(res.stdout)
    assert origin is None or not Path(origin).resolve().is_relative_to(REPO / "kernels"), origin
    assert ours == ["indextts-fast"]
    assert kernels_dist is None or "indextts-fast" not in kernels_dist


def test_checkout_on_sys_path_does_not_shadow_kernels():
    """`python -m ...` from a checkout puts the repository root first on sys.path. The folder kernels/ has no
    __init__.py, so `import kernels` there finds Hugging Face's package where it is installed (transformers 5.25+
    imports it from transformers.activations) and at most an empty namespace otherwise, never a module of ours."""
    code = (
        "import importlib.util, importlib.metadata as md, json\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "try:\n"
        "    hf = [str(f.locate()) for f in md.files('kernels') if str(f) == 'kernels/__init__.py']\n"
        "except md.PackageNotFoundError:\n"
        "    hf = None\n"
        "print(json.dumps([spec.origin if spec else None, list(spec.submodule_search_locations or []) if spec else [],"
        " hf]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    origin, locations, hf = json.loads(res.stdout)
    assert not (REPO / "kernels" / "__init__.py").exists()
    if hf is not None:  # Hugging Face's package is installed: it must be what `import kernels` finds
        assert origin is not None and Path(origin).resolve() == Path(hf[0]).resolve(), (origin, hf)
    else:
        assert origin is None or not Path(origin).resolve().is_relative_to(REPO), origin
        assert all(not (Path(loc) / "__init__.py").is_file() for loc in locations), locations


def test_dependency_direction():
    """indextts_kernels knows no model: it never imports indextts_fast or the official indextts package."""
    for path in KERNELS.glob("*.py"):
        text = path.read_text()
        assert "import indextts_fast" not in text and "from indextts_fast" not in text, path
        assert "import indextts\n" not in text and "from indextts." not in text, path


def test_reference_module_does_not_import_triton():
    assert "triton" not in (KERNELS / "reference.py").read_text().split('"""', 2)[-1]


def test_versions_agree():
    assert indextts_fast.__version__ == indextts_kernels.__version__


def test_every_subpackage_is_distributed():
    """Every folder of ours with an __init__.py is in pyproject's package list (an editable install would hide a
    missing one; a wheel would lack it)."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"indextts_kernels"} | {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "indextts_fast").rglob("__init__.py")
    }
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
