"""A throw-away PostgreSQL server for the search tests (initdb + pg_ctl in a temp dir), which a test may stop and start."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from gemma_ocr.serving.process import free_port
from tests.helpers.system_packages import missing_package


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


class PgCluster:
    """One PostgreSQL cluster on 127.0.0.1 (run as the postgres user when the tests run as root)."""

    def __init__(self, bin_dir: Path, data: Path) -> None:
        self.bin_dir, self.data, self.pgdata = bin_dir, data, data / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, str(self.bin_dir / cmd[0]), *cmd[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=self.data)

    def init(self) -> str:
        """Create the cluster; '' when done, else why not."""
        if self.as_user:  # the server refuses to run as root
            shutil.chown(self.data, "postgres", "postgres")
        done = self.pg("initdb", "-D", str(self.pgdata), "-U", "postgres", "-A", "trust", "-N")
        return "" if done.returncode == 0 else f"initdb failed: {done.stderr.strip()[-300:]}"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=80"
        done = self.pg("pg_ctl", "-D", str(self.pgdata), "-o", opts, "-l", str(self.data / "server.log"), "-w", "start")
        assert done.returncode == 0, done.stderr + (self.data / "server.log").read_text(errors="ignore")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` ends the sessions of connected clients, as a restart does."""
        done = self.pg("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def postgres() -> PgCluster:
    """A running PostgreSQL cluster for the module's tests."""
    pytest.importorskip("psycopg2", reason="psycopg2-binary (a dev dependency) is needed for PostgreSQL storage")
    why = missing_package("postgresql", lambda: _pg_bin() is not None)
    if why:
        pytest.skip(why)
    cluster = PgCluster(_pg_bin(), Path(tempfile.mkdtemp(prefix="gemma-ocr-pg-")))
    why = cluster.init()
    if why:
        pytest.skip(why)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.pg("pg_ctl", "-D", str(cluster.pgdata), "-m", "immediate", "stop")
        shutil.rmtree(cluster.data, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url(postgres: PgCluster) -> str:
    """The URL of the module's PostgreSQL cluster."""
    return postgres.url
