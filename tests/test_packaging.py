"""The package as users install it: a wheel (not an editable install) holds one package,
`soft_lightning`, with the top-level callbacks/ folder inside it as `soft_lightning.callbacks`,
and its CLI starts from any folder."""

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_from_another_folder(tmp_path):
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("soft_lightning", "callbacks"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "--wheel-dir", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("soft_lightning-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies this machine already has, without its editable soft_lightning (a path
    # line adds a folder; the editable install's finder is a .pth file there, which is not run).
    with open(f"{venv_site}/deps.pth", "w") as fh:
        fh.write("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "-q", str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    top_level = sorted(p.name for p in Path(venv_site).iterdir() if p.is_dir()
                       and not p.name.endswith((".dist-info", "__pycache__")))
    assert top_level == ["soft_lightning"], f"the wheel installs {top_level}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import json, soft_lightning.callbacks as c, soft_lightning.sampler as s; "
                            "print(json.dumps([c.__file__, s.__file__]))"], cwd=elsewhere, capture_output=True,
                           text=True)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(path.startswith(venv_site) for path in json.loads(where.stdout.splitlines()[-1]))
    help_ = subprocess.run([python, "-m", "soft_lightning", "fit", "--help"], cwd=elsewhere, capture_output=True,
                           text=True, timeout=300)
    assert help_.returncode == 0, help_.stderr[-2000:]
    assert "--bootstrap.icl.examples" in help_.stdout and "--bootstrap.sampler.backend" in help_.stdout
