"""Helpers the hostile-input and security modules share: a database of a module's own, and
queries on it from synchronous test code."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tests import pg

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def own_database(template: str, prefix: str = "iron_defer_hostile") -> Iterator[str]:
    """A fresh migrated database cloned from ``template`` for the block; dropped after."""
    name = pg.unique_name(prefix)
    pg.run_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield pg.dsn_for(name)
    finally:
        pg.run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def task_count(dsn: str) -> int:
    """Rows in iron_defer.tasks."""
    count: int = pg.fetch_sync(dsn, "SELECT count(*) AS n FROM iron_defer.tasks")[0]["n"]
    return count


def table_exists(dsn: str) -> bool:
    """Whether iron_defer.tasks is still there (nothing dropped it)."""
    rows = pg.fetch_sync(dsn, "SELECT to_regclass('iron_defer.tasks') IS NOT NULL AS present")
    present: bool = rows[0]["present"]
    return present


def address(url: str) -> tuple[str, int]:
    """(host, port) of an ``http://host:port`` URL."""
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


def raw_http(url: str, request: bytes, timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` (the exact bytes of an HTTP/1.1 request) to the server at ``url``;
    return its status, headers (lower-case names) and body (read up to Content-Length, or to
    the end of the connection when there is none)."""
    with socket.create_connection(address(url), timeout=timeout) as conn:
        conn.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = conn.recv(65536)
            assert chunk, f"connection closed without an answer: {received[:200]!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), f"no HTTP answer: {received[:200]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "-1"))
        while length < 0 or len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def get_request(target: bytes, *headers: bytes) -> bytes:
    """A GET request for ``target`` with extra header lines, closing the connection after."""
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"
