"""The package's import graph: no cycles, and the core never imports an integration."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_cycles", ROOT / ".ci" / "import_cycles.py")
import_cycles = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(import_cycles)  # type: ignore[union-attr]

KNOWN: list[list[str]] = []
"""Known cycles allowed (none left); nothing may be added."""


def test_no_import_cycles_and_no_core_import_of_an_integration() -> None:
    edges = import_cycles.graph(ROOT)
    assert "mmsearch_gym.evaluate" in edges and "mmsearch_gym.trajectories" in edges["mmsearch_gym.evaluate"]
    assert [c for c in import_cycles.cycles(edges) if c not in KNOWN] == []
    assert import_cycles.core_to_integrations(edges) == []


def test_the_checker_finds_cycles_through_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    package = tmp_path / "mmsearch_gym"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from mmsearch_gym import b\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mmsearch_gym.c\n"
                                  "def f():\n    from mmsearch_gym.a import x\n")
    (package / "c.py").write_text("import mmsearch_gym.b\nimport mmsearch_gym.integrations.trl\n")
    (package / "integrations").mkdir()
    (package / "integrations" / "__init__.py").write_text("")
    (package / "integrations" / "trl.py").write_text("")
    edges = import_cycles.graph(tmp_path)
    # b imports c for typing only, c imports b: that is a cycle too (the house rule), so all three
    assert import_cycles.cycles(edges) == [["mmsearch_gym.a", "mmsearch_gym.b", "mmsearch_gym.c"]]
    assert import_cycles.core_to_integrations(edges) == [("mmsearch_gym.c", "mmsearch_gym.integrations.trl")]


def test_importing_the_core_imports_no_heavy_dependency() -> None:
    code = ("import sys, mmsearch_gym, mmsearch_gym.evaluate, mmsearch_gym.replay, mmsearch_gym.policies, "
            "mmsearch_gym.runner, mmsearch_gym.metrics, mmsearch_gym.env_factory; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'stable_baselines3') if m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('mmsearch_gym.integrations')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[] []"
