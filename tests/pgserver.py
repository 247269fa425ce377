"""A throwaway PostgreSQL server for the test-suite.

``PgServer`` runs ``initdb`` + ``pg_ctl`` in a fresh temporary directory and
listens on a free port on 127.0.0.1 (plus a unix socket inside that directory).
Durability is switched off (fsync, synchronous_commit, full_page_writes) because
the data is thrown away at the end.

PostgreSQL refuses to run as root, so when the tests run as root the server
binaries are executed as the ``postgres`` system user (via ``runuser``, falling
back to ``su``) and the temporary directory is handed over to that user.

This module deliberately imports nothing from the project itself.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

__all__ = ["PgServer", "PgServerError", "find_pg_bindir"]

_REQUIRED_BINARIES = ("initdb", "pg_ctl")
_RUN_AS_USER = "postgres"  # system user the server runs as when we are root
_SUPERUSER = "postgres"  # database superuser created by initdb


class PgServerError(RuntimeError):
    """The throwaway PostgreSQL server could not be started or used."""


def _has_binaries(directory: Path) -> bool:
    return all(
        (directory / name).is_file() and os.access(directory / name, os.X_OK)
        for name in _REQUIRED_BINARIES
    )


def _version_key(version: str) -> tuple[int, ...]:
    """``"15"`` -> ``(15,)``, ``"9.6"`` -> ``(9, 6)``; junk sorts first."""
    parts = re.findall(r"\d+", version)
    return tuple(int(p) for p in parts) if parts else (-1,)


def find_pg_bindir() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``, or None if not installed.

    Looked up, in order: ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``
    (highest version first), then ``initdb`` on PATH.
    """
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
                stdin=subprocess.DEVNULL,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and _has_binaries(Path(out)):
            return Path(out)

    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_binaries(p)]
    if candidates:
        return max(candidates, key=lambda p: _version_key(p.parent.name))

    initdb = shutil.which("initdb")
    if initdb:
        # Prefer the real installation directory over a directory of symlinks.
        for directory in (Path(initdb).resolve().parent, Path(initdb).parent):
            if _has_binaries(directory):
                return directory
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _find_runuser() -> str | None:
    found = shutil.which("runuser")
    if found:
        return found
    for candidate in ("/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class PgServer:
    """One PostgreSQL cluster in a temporary directory.

    Usage::

        server = PgServer().start()
        server.create_database("t_abc")
        engine = sqlalchemy.create_engine(server.url("t_abc"))
        ...
        server.stop()

    It is also a context manager (``with PgServer() as server: ...``).
    """

    host = "127.0.0.1"
    user = _SUPERUSER

    def __init__(self, bindir: Path | str | None = None, *, startup_timeout: float = 30.0):
        found = Path(bindir) if bindir is not None else find_pg_bindir()
        if found is None:
            raise PgServerError(
                "PostgreSQL binaries not found (initdb/pg_ctl): looked at `pg_config --bindir`, "
                "/usr/lib/postgresql/*/bin and PATH"
            )
        self.bindir: Path = found
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.base_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._run_as: str | None = _RUN_AS_USER if os.geteuid() == 0 else None

    # -- paths -------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_file(self) -> Path:
        return self._base() / "server.log"

    def _base(self) -> Path:
        if self.base_dir is None:
            raise PgServerError("PgServer is not started")
        return self.base_dir

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> PgServer:
        if self.base_dir is not None:
            raise PgServerError(f"PgServer already started in {self.base_dir}")
        t0 = time.monotonic()
        # Short path under /tmp: the unix socket path must stay below ~107 bytes,
        # and every parent must be traversable by the postgres user.
        parent = "/tmp" if os.path.isdir("/tmp") else None
        self.base_dir = Path(tempfile.mkdtemp(prefix="segflow-pg-", dir=parent))
        try:
            os.chmod(self.base_dir, 0o755)
            if self._run_as is not None:
                try:
                    pw = pwd.getpwnam(self._run_as)
                except KeyError:
                    raise PgServerError(
                        f"running as root but there is no {self._run_as!r} system user to run "
                        "PostgreSQL as (PostgreSQL refuses to run as root)"
                    ) from None
                os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)
            self._initdb()
            self._write_config()
            self._start_postmaster()
            self._wait_until_ready(t0 + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m immediate``) and delete its directory."""
        atexit.unregister(self.stop)
        base = self.base_dir
        if base is None:
            return
        data = base / "data"
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            try:
                self._run(
                    [
                        self._bin("pg_ctl"),
                        "stop",
                        "-D",
                        str(data),
                        "-m",
                        "immediate",
                        "-w",
                        "-t",
                        "15",
                    ],
                    timeout=30,
                )
            except PgServerError:
                self._kill_postmaster(pid_file)
        shutil.rmtree(base, ignore_errors=True)
        self.base_dir = None
        self.port = None

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- public helpers ----------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL of database ``dbname`` on this server."""
        if self.port is None:
            raise PgServerError("PgServer is not started")
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def conninfo(self, dbname: str = "postgres") -> dict[str, object]:
        """Keyword arguments for ``psycopg.connect``."""
        if self.port is None:
            raise PgServerError("PgServer is not started")
        return {"host": self.host, "port": self.port, "user": self.user, "dbname": dbname}

    def connect(self, dbname: str = "postgres", **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(**self.conninfo(dbname), **kwargs)

    def create_database(self, name: str) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop ``name`` even if connections are still open to it (WITH (FORCE))."""
        with self.connect(autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- internals ---------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    def _env(self) -> dict[str, str]:
        # Stray PGDATA/PGPORT/PGHOST/... from the caller's environment must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _wrap(self, argv: list[str]) -> list[str]:
        if self._run_as is None:
            return argv
        runuser = _find_runuser()
        if runuser:
            return [runuser, "-u", self._run_as, "--", *argv]
        su = shutil.which("su") or "/bin/su"
        return [su, "-s", "/bin/sh", self._run_as, "-c", shlex.join(argv)]

    def _run(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        cmd = self._wrap(argv)
        try:
            proc = subprocess.run(
                cmd,
                cwd=self._base(),  # cwd must be accessible to the postgres user
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgServerError(
                f"timed out after {timeout}s: {shlex.join(cmd)}{self._log_tail_section()}"
            ) from exc
        except OSError as exc:
            raise PgServerError(f"could not run {shlex.join(cmd)}: {exc}") from exc
        if proc.returncode != 0:
            raise PgServerError(
                f"command failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                f"{proc.stdout}{proc.stderr}{self._log_tail_section()}"
            )
        return proc

    def _initdb(self) -> None:
        self._run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=120,
        )

    def _write_config(self) -> None:
        # Appending keeps the file's owner (postgres) even when we are root.
        settings = {
            "listen_addresses": f"'{self.host}'",
            "unix_socket_directories": f"'{self._base()}'",
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# segflow test-suite settings\n")
            for key, value in settings.items():
                f.write(f"{key} = {value}\n")

    def _start_postmaster(self) -> None:
        # The port is chosen before the server binds it; retry if someone else won the race.
        attempts = 3
        for attempt in range(1, attempts + 1):
            self.port = _free_port(self.host)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            try:
                self._run(
                    [
                        self._bin("pg_ctl"),
                        "start",
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_file),
                        "-w",
                        "-t",
                        str(max(1, int(self.startup_timeout))),
                        "-o",
                        f"-p {self.port}",
                    ],
                    timeout=self.startup_timeout + 15,
                )
                return
            except PgServerError:
                new_log = self._read_log()[log_offset:]
                if attempt < attempts and "could not bind" in new_log:
                    continue
                raise

    def _wait_until_ready(self, deadline: float) -> None:
        last_error: Exception | None = None
        while True:
            try:
                with self.connect(connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise PgServerError(
                    f"PostgreSQL on {self.host}:{self.port} did not accept connections within "
                    f"{self.startup_timeout}s: {last_error}{self._log_tail_section()}"
                )
            time.sleep(0.05)

    def _kill_postmaster(self, pid_file: Path) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)
            for _ in range(100):
                os.kill(pid, 0)  # raises once the process is gone
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)

    def _read_log(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except (OSError, PgServerError):
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._read_log().splitlines()[-lines:])

    def _log_tail_section(self) -> str:
        tail = self.log_tail()
        if not tail:
            return ""
        return f"\n--- server log tail ({self.log_file}) ---\n{tail}"
