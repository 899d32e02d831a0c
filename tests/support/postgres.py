"""A real, throwaway PostgreSQL server for the tests (no mocks, no Docker).

``PostgresServer`` runs Debian's server binaries (``/usr/lib/postgresql/<version>/bin``, newest first;
``HYBRIDPREF_PG_BIN`` overrides) on a free loopback port with a data folder in /tmp, and removes it
all on ``stop``. ``initdb`` and the server refuse to run as root: as root they run as the ``postgres``
system user (``runuser``), and the data folder is that user's. Authentication is ``trust`` on
127.0.0.1 only; durability settings are off (``fsync``): the tests kill clients, never the server.

Pytest fixtures: ``postgres_server`` (one server per test session, skipped with the reason when no
server binary is installed: ``python3 scripts/dev.py setup`` installs Debian's ``postgresql``) and
``store_url`` (parametrised: a SQLite file in ``tmp_path``, then a fresh database on that server).
Test modules import them: ``from support.postgres import postgres_server, store_url``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

SERVER_USER = "postgres"
START_TIMEOUT_S = 60


def find_bin_dir() -> Path | None:
    """Folder holding ``initdb``, ``pg_ctl`` and ``postgres``: ``$HYBRIDPREF_PG_BIN``, else the newest
    ``/usr/lib/postgresql/<version>/bin``, else the folder of ``pg_ctl`` on PATH."""
    candidates = [os.environ.get("HYBRIDPREF_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for folder in candidates:
        if folder and all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def skip_reason() -> str:
    return (
        "no PostgreSQL server binaries (initdb/pg_ctl): `python3 scripts/dev.py setup` installs Debian's "
        "postgresql package, or set HYBRIDPREF_PG_BIN"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in a temporary folder on 127.0.0.1:``port``."""

    def __init__(self, bin_dir: Path, user: str = SERVER_USER, durable: bool = False):
        """``durable=False`` (tests): fsync and synchronous commit off; ``True`` (benchmarks): the
        server's defaults, a commit waits for its WAL flush."""
        self.bin_dir = bin_dir
        self.durable = durable
        self.as_root = os.geteuid() == 0
        self.user = user if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        self.base = Path(tempfile.mkdtemp(prefix="hybridpref-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = 0

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", self.user, "--", *cmd] if self.as_root else cmd

    def start(self) -> PostgresServer:
        if self.as_root:
            entry = pwd.getpwnam(self.user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            self._cmd(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"
            ),
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.base,
        )
        for _ in range(5):  # the free port may be taken between the probe and the bind: retry
            self.port = free_port()
            options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200"
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            started = subprocess.run(
                self._cmd(
                    "pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_S), "-D", str(self.data), "-l", str(self.log), "-o", options
                ),
                capture_output=True,
                timeout=START_TIMEOUT_S + 10,
                cwd=self.base,
            )
            if started.returncode == 0:
                return self
        raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                self._cmd("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data)),
                capture_output=True,
                timeout=60,
                cwd=self.base,
            )
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE / DROP DATABASE) on the server."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(skip_reason())
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(
                f"running as root and there is no {SERVER_USER!r} system user to run PostgreSQL as "
                "(Debian's postgresql package creates it)"
            )
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty store database: a SQLite file, or a new database on the session's server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    started = time.monotonic()
    while True:  # a killed child's connection may linger for a moment
        try:
            server.drop_database(url)
            break
        except Exception:
            if time.monotonic() - started > 10:
                raise
            time.sleep(0.2)
