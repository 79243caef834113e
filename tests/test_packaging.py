"""The installed package, not the source tree: build the wheel, install it into a fresh venv, and run it from a
folder outside the repository, so that nothing can be read from the checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import realaction
from realaction.decoding.footage import make_synthetic

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(realaction.__file__).parent / "assets" / "data_card.md"


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd[:4]} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the python of a fresh venv with it installed); dependencies come from this interpreter."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: the build writes build/ and *.egg-info next to the sources
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for entry in REPO.iterdir():
        if entry.is_dir() and (entry / "__init__.py").is_file() and entry.name != "tests":
            shutil.copytree(entry, src / entry.name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp / "dist", src])
    (wheel,) = (tmp / "dist").glob("realdpo-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    # The dependencies (torch, av, ...) are this interpreter's. Paths listed in a .pth file are added without
    # running the .pth files inside them, so an editable install of the checkout there stays inactive.
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    deps.append(sysconfig.get_paths()["purelib"])
    (purelib / "zz_test_dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    return wheel, python


def test_the_wheel_ships_the_data_card_template(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "realaction/assets/data_card.md" in names, sorted(n for n in names if n.startswith("realaction/"))


def test_installed_curate_writes_the_full_data_card(installed, tmp_path):
    _, python = installed
    footage = tmp_path / "footage"
    footage.mkdir()
    make_synthetic(footage / "moving.mp4", "moving", seconds=2.0, seed=3)
    (footage / "moving.txt").write_text("a person waves")
    run_dir = tmp_path / "elsewhere"  # the working folder: not the repository, so `import realaction` cannot find it
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = _run([python, "-c", "import realaction; print(realaction.__file__)"], cwd=run_dir, env=env).stdout.strip()
    assert Path(where).resolve().is_relative_to(python.parent.parent.resolve()), where
    _run([python.parent / "realdpo", "curate", "--src", footage, "--out", tmp_path / "out", "--max-side", "64",
          "--max-text-area", "1"], cwd=run_dir, env=env)

    card = (tmp_path / "out" / "DATA_CARD.md").read_text(encoding="utf-8")
    template = TEMPLATE.read_text(encoding="utf-8")
    fixed = [line for line in template.splitlines() if line.strip() and "$" not in line]
    missing = [line for line in fixed if line not in card.splitlines()]
    assert not missing, f"the installed package's card lacks {len(missing)} lines of the template: {missing[:5]}"
    assert not re.findall(r"\$[a-z_]+", card)  # every placeholder filled
