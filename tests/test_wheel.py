"""The wheel holds everything the default model needs: installed in a fresh virtual environment, with no network
and no checkout, `sonate generate` speaks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DATA = ("models/checkpoints/default", "clients/demo")  # folders whose every file the wheel must carry
WHERE_FROM = """
import json, sys
import sonate.models, sonate.streamer.cli.main
print(json.dumps({
    "models": sonate.models.__file__,
    "cli": sonate.streamer.cli.main.__file__,
    "editable_finders": [type(f).__module__ for f in sys.meta_path if "editable" in type(f).__module__],
}))
"""


def run(*command: str | Path, cwd: Path | None = None) -> str:
    """Run `command` (no PYTHONPATH: the fresh environment must stand on its own) and return its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_wheel(out: Path, scratch: Path) -> Path:
    """Build the project's wheel into `out` from a copy of its sources (setuptools builds in the source folder,
    and a stale `build/` there would ship files deleted since)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    source = scratch / "source"
    source.mkdir()
    for name in ("pyproject.toml", pyproject["project"]["readme"]):
        shutil.copy(ROOT / name, source / name)
    for folder in pyproject["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, source)
    return next(out.glob("sonate-*.whl"))


def fresh_environment(wheel: Path, where: Path) -> Path:
    """A new virtual environment with `wheel` installed and the project environment's site-packages on its path
    (a plain path line: the editable install's own .pth in there is not processed); returns its `bin`."""
    run(sys.executable, "-m", "venv", "--without-pip", where)
    python = where / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "project-dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return where / "bin"


@pytest.mark.slow
def test_the_wheel_generates_outside_the_checkout(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "wheels", tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = [
        f"sonate/{path.relative_to(ROOT).as_posix()}"
        for folder in SHIPPED_DATA
        for path in sorted((ROOT / folder).rglob("*"))
        if path.is_file()
    ]
    assert any("references/voice.wav" in name for name in needed)
    assert [name for name in needed if name not in names] == []

    bin_dir = fresh_environment(wheel, tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    origin = json.loads(run(bin_dir / "python", "-c", WHERE_FROM, cwd=elsewhere))
    installed = (tmp_path / "venv").resolve()
    assert Path(origin["models"]).resolve().is_relative_to(installed), origin
    assert Path(origin["cli"]).resolve().is_relative_to(installed), origin
    assert origin["editable_finders"] == []

    printed = run(bin_dir / "sonate", "generate", "--text", "Hi there", "--out", "x.mp4", cwd=elsewhere)
    assert "wrote x.mp4" in printed
    with av.open(str(elsewhere / "x.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video))
        container.seek(0)
        samples = sum(frame.samples for frame in container.decode(audio))
    assert frames > 0 and samples > 0
