"""The folder kernels/ ships as the import package indextts_kernels; nothing claims the name `kernels`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import indextts_fast
import indextts_kernels

REPO = Path(__file__).resolve().parents[1]


def test_indextts_kernels_is_the_kernels_folder():
    assert Path(indextts_kernels.__file__).resolve().parent == REPO / "kernels"


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
    assert origin is None or not Path(origin).resolve().is_relative_to(REPO), origin
    assert ours == ["indextts-fast"]
    assert kernels_dist is None or "indextts-fast" not in kernels_dist


def test_dependency_direction():
    """indextts_kernels knows no model: it never imports indextts_fast or the official indextts package."""
    for path in (REPO / "kernels").glob("*.py"):
        text = path.read_text()
        assert "import indextts_fast" not in text and "from indextts_fast" not in text, path
        assert "import indextts\n" not in text and "from indextts." not in text, path


def test_reference_module_does_not_import_triton():
    assert "triton" not in (REPO / "kernels" / "reference.py").read_text().split('"""', 2)[-1]


def test_versions_agree():
    assert indextts_fast.__version__ == indextts_kernels.__version__
