"""Docs execute: every ```python block in README.md and docs/ runs as a program against a
fresh database and exits 0; blocks marked ```python fragment must at least compile."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python( fragment)?\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks() -> list[tuple[str, bool, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for index, match in enumerate(_BLOCK.finditer(path.read_text(encoding="utf-8"))):
            name = f"{path.relative_to(ROOT)}#{index + 1}"
            found.append((name, match.group(1) is not None, match.group(2)))
    return found


BLOCKS = _blocks()


def test_docs_have_runnable_snippets() -> None:
    """The collection itself works (a regex slip would silently test nothing)."""
    runnable = [name for name, fragment, _ in BLOCKS if not fragment]
    assert any(name.startswith("README.md") for name in runnable)
    assert len(runnable) >= 5


@pytest.mark.parametrize(("name", "fragment", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_snippet_runs(name: str, fragment: bool, code: str, database_url: str) -> None:
    """The snippet runs to completion against a fresh database (fragments compile)."""
    compile(code, name, "exec")
    if fragment:
        return
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
