"""The layout's rules, checked on the source: imports flow data -> towers -> serving -> bench -> apps,
serving never imports the training loop, and the HTTP process does not load it either."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["data", "towers", "serving", "bench", "apps"]  # each may import only itself and the ones before it


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n.startswith("vistaste.")}


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_flow_one_way(layer):
    allowed = {f"vistaste.{name}" for name in LAYERS[: LAYERS.index(layer) + 1]}
    wrong = []
    for path in sorted((ROOT / layer).glob("*.py")):
        for name in _imports(path):
            package = ".".join(name.split(".")[:2])
            if package not in allowed and package not in ("vistaste._quiet", "vistaste"):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_serving_never_imports_the_training_loop():
    wrong = [f"{p.relative_to(ROOT)}: {n}" for p in sorted((ROOT / "serving").glob("*.py")) for n in _imports(p)
             if n.startswith("vistaste.towers.training")]
    assert not wrong, wrong


@pytest.mark.e2e
def test_the_http_process_loads_no_training_bench_or_app_code():
    code = ("import sys, vistaste.serving.service; "
            "print(sorted(m for m in sys.modules if m.startswith(('vistaste.towers.training', 'vistaste.towers.trained', "
            "'vistaste.serving.export', 'vistaste.bench', 'vistaste.apps'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert out == "[]", out


def test_embedding_on_onnxruntime_never_imports_tensorflow():
    """The default backbone builds its ONNX graph from the packaged weights and embeds without TensorFlow
    (whose import alone took 5-7 s of each `vistaste embed` before the architecture constants moved out)."""
    code = ("import sys, numpy as np; from vistaste.data.backbones import get_backbone; b = get_backbone(); "
            "v = b.embed(np.zeros((2, b.image_size, b.image_size, 3), np.uint8)); "
            "print(v.shape, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert out == "(2, 1280) False", out
