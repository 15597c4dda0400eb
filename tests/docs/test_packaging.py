"""The wheel carries what an installed package needs: migrations, named SQL, py.typed, and
the console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("iron_defer_trio-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_ships_every_migration(wheel: zipfile.ZipFile) -> None:
    """Each file of migrations/ is inside the package, where the runner looks first."""
    names = set(wheel.namelist())
    for migration in sorted((ROOT / "migrations").glob("*.sql")):
        packaged = f"iron_defer_trio/_migrations/{migration.name}"
        assert packaged in names
        assert wheel.read(packaged) == migration.read_bytes()


def test_wheel_ships_named_sql_and_type_marker(wheel: zipfile.ZipFile) -> None:
    """The store's .sql files and py.typed are packaged."""
    names = set(wheel.namelist())
    for sql in (ROOT / "iron_defer_trio" / "store" / "sql").glob("*.sql"):
        assert f"iron_defer_trio/store/sql/{sql.name}" in names
    assert "iron_defer_trio/py.typed" in names


def test_wheel_declares_the_console_script(wheel: zipfile.ZipFile) -> None:
    """`iron-defer-trio` is installed as a command."""
    (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "iron-defer-trio = iron_defer_trio.cli:main" in wheel.read(entry_points).decode()


def test_wheel_ships_the_dashboard_templates_and_static_files(wheel: zipfile.ZipFile) -> None:
    """`serve` renders /ui from files inside the package: every template and static file."""
    names = set(wheel.namelist())
    ui = ROOT / "iron_defer_trio" / "http" / "ui"
    shipped = [p for d in ("templates", "static") for p in (ui / d).rglob("*") if p.is_file()]
    assert len(shipped) >= 8
    for path in shipped:
        assert f"{path.relative_to(ROOT).as_posix()}" in names
