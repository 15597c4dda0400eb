"""Loading Task classes from ``tasks.modules`` / ``--app``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from iron_defer_trio._modules import load_task_classes
from iron_defer_trio.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

SCANNED = """
from typing import ClassVar
import iron_defer_trio as iron_defer
from iron_defer_trio import Task as ImportedBase  # imported, not defined here: ignored


class Alpha(iron_defer.Task):
    KIND: ClassVar[str] = "alpha"
    async def execute(self, ctx): ...


class Abstract(iron_defer.Task):  # no KIND: a base for others, ignored
    async def execute(self, ctx): ...


class Beta(Abstract):
    KIND: ClassVar[str] = "beta"
"""

EXPLICIT = """
from typing import ClassVar
import iron_defer_trio as iron_defer
from {scanned} import Alpha


class Hidden(iron_defer.Task):
    KIND: ClassVar[str] = "hidden"
    async def execute(self, ctx): ...


IRON_DEFER_TASKS = [Alpha]
"""


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A unique importable module name prefix in a temp dir on sys.path."""
    prefix = f"mods_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{prefix}_scanned.py").write_text(SCANNED)
    (tmp_path / f"{prefix}_explicit.py").write_text(EXPLICIT.format(scanned=f"{prefix}_scanned"))
    (tmp_path / f"{prefix}_empty.py").write_text("X = 1\n")
    (tmp_path / f"{prefix}_wrong.py").write_text("IRON_DEFER_TASKS = [int]\n")
    (tmp_path / f"{prefix}_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    return prefix


def test_scanning_takes_task_classes_defined_in_the_module(package: str) -> None:
    """Every Task subclass defined (not imported) in the module with a KIND is taken."""
    kinds = [cls.KIND for cls in load_task_classes([f"{package}_scanned"])]
    assert sorted(kinds) == ["alpha", "beta"]


def test_an_explicit_list_wins_over_scanning(package: str) -> None:
    """IRON_DEFER_TASKS names exactly the classes to register."""
    kinds = [cls.KIND for cls in load_task_classes([f"{package}_explicit"])]
    assert kinds == ["alpha"]


def test_a_class_listed_by_two_modules_is_registered_once(package: str) -> None:
    """Modules may overlap."""
    classes = load_task_classes([f"{package}_scanned", f"{package}_explicit"])
    assert sorted(cls.KIND for cls in classes) == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("_empty", "defines no Task subclass"),
        ("_wrong", "must list Task classes"),
        ("_broken", "cannot import .* RuntimeError: boom at import"),
        ("_missing", "cannot import .* ModuleNotFoundError"),
    ],
)
def test_unusable_modules_are_config_errors(package: str, suffix: str, message: str) -> None:
    """A module that cannot be imported or holds no task is reported, naming the module."""
    with pytest.raises(ConfigError, match=message):
        load_task_classes([f"{package}{suffix}"])
