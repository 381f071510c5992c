"""A non-editable install must carry everything MMSearch-v0 needs (specs, world data, cassettes).

Builds the wheel, checks its contents, installs it into an empty target folder and makes
MMSearch-v0 from there in a subprocess whose working directory is outside the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling (pip install hatchling)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, timeout=300)
    return next(out.glob("mmsearch_gym-*.whl"))


def test_wheel_carries_specs_world_data_and_cassettes(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "mmsearch_gym/_bundled/envs/MMSearch-v0.json" in names
    assert any(n.startswith("mmsearch_gym/_bundled/offline_cache/") and n.endswith(".jsonl") for n in names)
    assert any(n.startswith("mmsearch_gym/_bundled/policies/") for n in names)
    assert any(n.startswith("mmsearch_gym/world/data/") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_installed_wheel_makes_mmsearch_v0_offline(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import gymnasium as gym, mmsearch_gym\n"
        "assert mmsearch_gym.__file__.startswith(sys.argv[1]), mmsearch_gym.__file__\n"
        "env = gym.make('MMSearch-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "obs, r, term, trunc, info = env.step('<reason>r</reason><search><img></search>')\n"
        "assert info['hits'], 'image search returned nothing'\n"
        "print('ok', info['task_id'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MMSEARCH_GYM_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", script, str(target)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ")
