"""A real PostgreSQL server for the tests: initdb in a temporary folder, one server per test session, and a fresh
database per test.

The server listens on 127.0.0.1 (a free port) and on a unix socket in its folder. Local socket connections are
trusted (the fixture's own administration); TCP connections need the password of the ``wanx`` role, so the URLs
the tests hand to wanx-mcp carry a password that must never show up in its messages. PostgreSQL refuses to run
as root: as root, the server runs as the ``postgres`` account (``runuser``), its folder chowned to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
from psycopg import sql
from support import free_port

ROLE = "wanx"


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started here (no server binaries, or root without a ``postgres`` account)."""


def find_bindir() -> Path:
    """The folder of ``initdb``/``pg_ctl``: on the PATH, ``pg_config --bindir``, or Debian's newest
    /usr/lib/postgresql/N/bin."""
    candidates: list[Path] = []
    if on_path := shutil.which("pg_ctl"):
        candidates.append(Path(on_path).parent)
    if pg_config := shutil.which("pg_config"):
        with suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(Path(done.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise Unavailable("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package")


class PostgresServer:
    """One running PostgreSQL cluster in ``root`` (see the module docstring)."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root = root
        self.bindir = bindir
        self.data = root / "data"
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self._account: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root without a 'postgres' account to run PostgreSQL as") from None
            os.chown(root, account.pw_uid, account.pw_gid)
            self._account = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._account, *command], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> None:
        secret = self.root / "password"
        secret.write_text(self.password)
        if self._account:
            shutil.chown(secret, "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync",
                  "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={secret}")  # fmt: skip
        secret.unlink()
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip
        with self._admin() as db:
            db.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(self.password)))  # fmt: skip

    def stop(self) -> None:
        with suppress(RuntimeError, subprocess.SubprocessError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def url(self, dbname: str) -> str:
        """A ``postgresql://`` URL of ``dbname`` over TCP, with the ``wanx`` role's password."""
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh empty database owned by ``wanx``; yields its URL and drops it (and its connections) after."""
        name = f"test_{secrets.token_hex(6)}"
        with self._admin() as db:
            db.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE)))
        try:
            yield self.url(name)
        finally:
            with self._admin() as db:
                db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server in a new temporary folder; stop it and delete everything on exit.

    Raises :class:`Unavailable` when it cannot run here. The folder is made with ``tempfile`` (world-searchable
    /tmp), not pytest's per-user folder, which the ``postgres`` account could not enter.
    """
    bindir = find_bindir()
    root = Path(tempfile.mkdtemp(prefix="wanx-pg-"))
    try:
        server = PostgresServer(root, bindir)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
