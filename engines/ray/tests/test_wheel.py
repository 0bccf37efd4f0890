"""The `wasmpipe` wheel (`make wheel`) installs a working binary: what a
Ray node or a node image gets with `pip install`."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from conftest import REPO


def test_the_wheel_installs_a_working_wasmpipe(tmp_path: Path) -> None:
    wheels = sorted((REPO / "target" / "wheels").glob("wasmpipe-*.whl"), key=lambda p: p.stat().st_mtime)
    assert wheels, "no wheel in target/wheels: `make wheel` builds it (make test does)"
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # pip from this interpreter installs into the new environment.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheels[-1])],
        check=True,
    )
    binary = env_dir / "bin" / "wasmpipe"
    assert binary.is_file(), list((env_dir / "bin").iterdir())
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("wasmpipe "), version
    plan = subprocess.run(
        [str(binary), "plan", "examples/diabetes/wasmpipe.toml"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert plan.returncode == 0, plan.stderr
    assert 'pipeline "diabetes": plan ' in plan.stdout, plan.stdout
