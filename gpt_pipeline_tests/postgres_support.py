"""A throwaway PostgreSQL server on 127.0.0.1 for the deployment tests.

:func:`postgres_server` runs a real PostgreSQL cluster from the local binaries (Debian's
``postgresql`` package, which ``.ci/run`` installs when missing): ``initdb`` into a fresh
directory under ``/dev/shm`` (or ``/tmp``), ``pg_ctl start`` on a free port of 127.0.0.1 with
its socket in that directory, a login role with a password (``scram-sha-256`` over TCP, as a
real deployment would), and the databases asked for. At exit it stops the server (``pg_ctl stop -m fast``), waits until the
postmaster is gone and removes the directory: no process and no file is left behind.

PostgreSQL refuses to run as root, so as root every server command runs as the ``postgres``
system user (``runuser``), which owns the directory; otherwise as the current user.
The cluster is for tests only: ``fsync`` is off.

It does not install anything: when the binaries are missing it raises :class:`PostgresMissing`,
whose message says how to get them. Tests fail on it rather than skip, so that a CI machine
without PostgreSQL shows up as a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

BIN_DIR_ENV = "GPT_PIPELINE_PG_BIN"
HOST = "127.0.0.1"
ROLE = "gpt_pipeline"
SUPERUSER = "postgres"


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl, postgres) cannot be found."""


def postgres_bin_dir() -> Path:
    """The directory that holds ``initdb``, ``pg_ctl`` and ``postgres``.

    ``$GPT_PIPELINE_PG_BIN`` when set, else the newest ``/usr/lib/postgresql/<version>/bin``
    (Debian, Ubuntu), else the directory of ``initdb`` on the ``PATH``. :class:`PostgresMissing`
    when none holds all three.
    """
    configured = os.environ.get(BIN_DIR_ENV)
    if configured:
        candidates = [Path(configured)]
        where = configured
    else:

        def version(path: str) -> tuple[int, ...]:
            number = Path(path).parent.name
            return tuple(int(part) for part in number.split(".") if part.isdigit())

        debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
        on_path = shutil.which("initdb")
        candidates = [Path(d) for d in debian] + ([Path(on_path).parent] if on_path else [])
        where = "/usr/lib/postgresql/*/bin or on the PATH"
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise PostgresMissing(
        f"PostgreSQL server binaries not found in {where}: run .ci/run (it installs Debian's "
        f"`postgresql` package) or `apt-get install -y postgresql`, or set ${BIN_DIR_ENV} to "
        "the directory that holds initdb, pg_ctl and postgres"
    )


def _scratch_parent() -> str | None:
    """``/dev/shm`` when it is a memory filesystem with room (a cluster is ~70 MB and ~3,000
    files, whose removal takes seconds on a disk mounted with ``discard``), else the default
    temporary directory. Either is world-writable with the sticky bit, so the ``postgres`` user
    can reach a directory in it."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 1 << 30:
            return str(shm)
    except OSError:
        pass
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    """A running server: where it listens and the login that owns its databases."""

    port: int
    user: str
    password: str
    superuser_password: str
    root: Path
    bin_dir: Path
    host: str = HOST

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """A SQLAlchemy URL for ``database`` (MLflow's backend store URI)."""
        return f"{driver}://{self.user}:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"

    def connect(self, database: str, superuser: bool = False):
        """A psycopg2 connection (autocommit) to ``database``."""
        import psycopg2

        connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            dbname=database,
            user=SUPERUSER if superuser else self.user,
            password=self.superuser_password if superuser else self.password,
            connect_timeout=10,
        )
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> None:
        """An empty database ``name`` owned by :attr:`user`."""
        with contextlib.closing(self.connect("postgres", superuser=True)) as connection:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}" OWNER "{self.user}"')

    def tables(self, database: str) -> set[str]:
        """Names of the tables in the ``public`` schema of ``database``."""
        with contextlib.closing(self.connect(database)) as connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                return {row[0] for row in cursor.fetchall()}


def _as_server_user() -> list[str]:
    """The command prefix that runs a server command as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError as exc:
        raise PostgresMissing(
            "running as root and there is no `postgres` system user to run the server as: "
            "install Debian's `postgresql` package (.ci/run does) or run the tests as another user"
        ) from exc
    return ["runuser", "-u", SUPERUSER, "--"]


def _run(command: Sequence[str], cwd: Path) -> None:
    done = subprocess.run(
        [*_as_server_user(), *command], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}"
        )


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _stop(bin_dir: Path, root: Path, data: Path, pid: int | None) -> None:
    """Stop the server and wait until the postmaster has exited; kill it as a last resort."""
    for mode in ("fast", "immediate"):
        try:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "30", "stop"], root)
            break
        except (RuntimeError, subprocess.TimeoutExpired):
            continue
    if pid is None:
        return
    deadline = time.monotonic() + 15
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def postgres_server(databases: Sequence[str] = ()) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL server with ``databases`` owned by a password login; removed at exit."""
    bin_dir = postgres_bin_dir()
    prefix = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="gpt-pipeline-pg-", dir=_scratch_parent()))
    data = root / "data"
    pid = None
    try:
        if prefix:
            shutil.chown(root, SUPERUSER, SUPERUSER)
        superuser_password = secrets.token_hex(16)
        password_file = root / "superuser.pw"
        password_file.write_text(superuser_password + "\n")
        if prefix:
            shutil.chown(password_file, SUPERUSER, SUPERUSER)
        _run(
            [
                str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--pwfile", str(password_file),
                "--auth-local", "trust", "--auth-host", "scram-sha-256",
                "--locale", "C", "--encoding", "UTF8", "--no-sync",
            ],
            root,
        )
        password_file.unlink()
        for attempt in range(3):  # the port may be taken between free_port() and the start
            port = free_port()
            options = f"-p {port} -k {root} -c listen_addresses={HOST} -c fsync=off -c full_page_writes=off"
            try:
                _run(
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                     "-w", "-t", "60", "-o", options, "start"],
                    root,
                )
                break
            except RuntimeError:
                if attempt == 2:
                    log = root / "server.log"
                    raise RuntimeError(
                        f"PostgreSQL did not start: {log.read_text()[-2000:] if log.exists() else ''}"
                    ) from None
        pid = _postmaster_pid(data)
        server = PostgresServer(
            port=port, user=ROLE, password=secrets.token_hex(16),
            superuser_password=superuser_password, root=root, bin_dir=bin_dir,
        )
        with contextlib.closing(server.connect("postgres", superuser=True)) as connection:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD %s", (server.password,))
        for name in databases:
            server.create_database(name)
        yield server
    finally:
        if data.exists():
            _stop(bin_dir, root, data, pid)
        shutil.rmtree(root, ignore_errors=True)
