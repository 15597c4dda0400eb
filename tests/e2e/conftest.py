"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.e2e.serving import write_tasks_module

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A folder holding ``e2e_tasks.py``, the task classes served with ``--app e2e_tasks``."""
    return write_tasks_module(tmp_path)
