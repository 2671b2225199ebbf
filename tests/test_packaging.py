"""The package builds as a wheel that installs the three subpackages under one `vistaste` name."""
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_wheel_installs_and_imports_from_anywhere(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                            str(ROOT)], check=True, capture_output=True, text=True)
    # The build is clean: no setuptools deprecation (license table, classifiers) or other warning.
    assert "warning" not in (built.stdout + built.stderr).replace("WARNING: Location", "").lower(), built.stderr
    wheel = next((tmp_path / "dist").glob("vistaste-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    # Dependencies come from the test environment (installing TensorFlow again would take minutes).
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = "import vistaste, vistaste.data, vistaste.towers, vistaste.serving; print(vistaste.data.__file__)"
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(env_dir) in out  # imported from the installed wheel, not the source tree
    help_text = subprocess.run([str(env_dir / "bin" / "vistaste"), "--help"], cwd=tmp_path, capture_output=True, text=True,
                               check=True).stdout
    assert "world" in help_text and "validate" in help_text
