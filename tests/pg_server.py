"""A throwaway PostgreSQL server for tests: ``initdb`` into a fresh temp dir, ``pg_ctl start`` on a free loopback port
(unix socket in the same dir), databases on demand, ``pg_ctl stop`` and the dir removed afterwards.

The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``, not on PATH), from
``pg_config --bindir``, from PATH, or from ``$AGNEWS_PG_BINDIR``. PostgreSQL refuses to run as root: as root the
cluster is created and run as the ``postgres`` OS user the package creates; as anyone else, as that user.
Password authentication (scram-sha-256) even on loopback, so URLs in tests carry a password as real ones do.

    with PostgresServer() as server:
        url = server.create_database("study")   # postgresql+psycopg://agnews:<password>@127.0.0.1:<port>/study
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

INSTALL_HINT = "install it: apt-get install -y postgresql (Debian/Ubuntu), or set AGNEWS_PG_BINDIR to its bin folder"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or no OS user to run them as."""


def find_bin_dir() -> Path:
    candidates: list[str] = []
    if os.environ.get("AGNEWS_PG_BINDIR"):
        candidates.append(os.environ["AGNEWS_PG_BINDIR"])
    if shutil.which("pg_config"):
        result = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(result.stdout.strip())
    # Debian: one folder per major version; the newest wins.
    version = lambda folder: [int(n) for n in re.findall(r"\d+", Path(folder).parent.name)]  # noqa: E731
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).resolve().parent))
    for folder in candidates:
        if folder and all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "createdb")):
            return Path(folder)
    raise PostgresUnavailable(f"No PostgreSQL server binaries (initdb, pg_ctl, postgres) found; {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self, user: str = "agnews") -> None:
        self.bin_dir = find_bin_dir()
        self.user, self.password = user, secrets.token_hex(12)
        self.port: int | None = None
        self.root: Path | None = None
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam("postgres")
            except KeyError as error:
                raise PostgresUnavailable("Running as root, and there is no 'postgres' OS user to run the server as "
                                          f"(PostgreSQL refuses root); {INSTALL_HINT}") from error

    # ------------------------------------------------------------------ processes
    def _server_tool(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        """initdb / pg_ctl, as the server's OS user; output to a file (the server must not hold our pipes)."""
        assert self.root is not None
        kwargs: dict = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        with open(self.root / f"{tool}.out", "a") as out:
            return subprocess.run([str(self.bin_dir / tool), *args], cwd=self.root, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=120, **kwargs)

    def _tail(self, name: str) -> str:
        assert self.root is not None
        path = self.root / name
        return path.read_text(errors="replace")[-3000:] if path.is_file() else ""

    def start(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="agnews-pg-"))  # /tmp, short: the socket path has ~100 chars max
        atexit.register(self.stop)  # also when a test session ends without running fixture teardown
        (self.root / "pwfile").write_text(self.password + "\n")
        if self._run_as is not None:
            for path in (self.root, self.root / "pwfile"):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        data = str(self.root / "data")
        result = self._server_tool("initdb", "-D", data, "-U", self.user, f"--pwfile={self.root / 'pwfile'}",
                                   "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")
        if result.returncode != 0:
            raise PostgresUnavailable(f"initdb failed:\n{self._tail('initdb.out')}")
        for _ in range(3):  # the free port may be taken between free_port() and the server's bind
            self.port = free_port()
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off")
            result = self._server_tool("pg_ctl", "-D", data, "-l", str(self.root / "server.log"), "-w", "-t", "60",
                                       "-o", options, "start")
            if result.returncode == 0:
                break
        else:
            log = self._tail("server.log")
            self.stop()
            raise PostgresUnavailable(f"pg_ctl start failed:\n{log}")
        return self

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its folder; idempotent."""
        root = self.root
        if root is None:
            return
        try:
            if (root / "data" / "postmaster.pid").exists():
                data = str(root / "data")
                result = self._server_tool("pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30", "stop")
                if result.returncode != 0:
                    self._server_tool("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        finally:
            self.root = None
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients
    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "data"

    def url(self, database: str, driver: str = "psycopg", password: str | None = None,
            include_password: bool = True) -> str:
        """``include_password=False``: the client takes it from $PGPASSWORD (or ~/.pgpass), as libpq does."""
        assert self.port is not None, "server not started"
        password = self.password if password is None else password
        credentials = f"{self.user}:{password}" if include_password else self.user
        return f"postgresql+{driver}://{credentials}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        assert self.port is not None, "server not started"
        env = {**os.environ, "PGPASSWORD": self.password}
        result = subprocess.run([str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                                 "-U", self.user, name], env=env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {result.stderr}")
        return self.url(name)
