"""Where studies live: SQLite by default, a PostgreSQL/MySQL URL or a journal file for many workers.

``--storage`` forms:

* ``sqlite:///optuna_studies/NAME.db`` (default; one machine),
* ``postgresql://user:pass@host:5432/db`` / ``mysql+pymysql://...`` (many machines),
* ``journal:PATH`` (or a path ending in ``.log``/``.journal``): an append-only journal file,
  which several processes (or machines on a shared file system) can use without a database server.

:func:`study_lock` serialises the moment a worker claims its next trial, so that a study-wide budget
(a grid, ``--max-total-trials``) is never overrun by workers racing each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from gemma_ocr.errors import GemmaOcrError

log = logging.getLogger(__name__)

DEFAULT_STUDIES_DIR = Path("optuna_studies")
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def default_storage(study_name: str, studies_dir: str | Path = DEFAULT_STUDIES_DIR) -> str:
    """``sqlite:///optuna_studies/{study}.db`` (relative to the working directory)."""
    return f"sqlite:///{Path(studies_dir) / f'{study_name}.db'}"


def normalize_url(url: str) -> str:
    """A PostgreSQL URL without a driver gets the installed one; other URLs are unchanged.

    ``postgres://`` becomes ``postgresql://``; SQLAlchemy 2.1 takes psycopg (3) for a bare
    ``postgresql://``, so when only psycopg2 is installed the URL names it (``postgresql+psycopg2://``).
    """
    import importlib.util

    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def mask(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and result files)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def journal_path(url: str) -> Path | None:
    """The journal file of a ``journal:`` URL or a ``.log``/``.journal`` path; None for other URLs."""
    if url.startswith("journal:"):
        rest = url[len("journal:"):]
        if rest.startswith("//"):
            rest = rest[2:]
        if not rest:
            raise GemmaOcrError("--storage journal: needs a file path, e.g. journal:optuna_studies/NAME.log")
        return Path(rest)
    if "://" not in url and url.endswith((".log", ".journal")):
        return Path(url)
    return None


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory SQLite)."""
    if url.startswith("sqlite:///") and url not in ("sqlite:///", "sqlite:///:memory:"):
        return Path(url[len("sqlite:///"):])
    return None


def open_storage(url: str, heartbeat: bool = True) -> BaseStorage:
    """Open (creating files/tables as needed) the storage behind ``url``; one clear line when it fails."""
    url = normalize_url(url)
    jpath = journal_path(url)
    try:
        if jpath is not None:
            jpath.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(jpath)))
        if "://" not in url:
            raise GemmaOcrError(
                f"--storage {url!r} is not a storage URL (use sqlite:///PATH.db, postgresql://..., or journal:PATH)"
            )
        spath = sqlite_path(url)
        if spath is not None:
            spath.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {}
        if heartbeat:
            kwargs = {"heartbeat_interval": HEARTBEAT_INTERVAL_S, "grace_period": GRACE_PERIOD_S}
        engine_kwargs = {"connect_args": {"timeout": 60}} if spath is not None else {"pool_pre_ping": True}
        with study_lock(url, "__tables__"):  # workers starting together would race to create the tables
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        if spath is not None:
            _sqlite_wal(storage)
        return storage
    except GemmaOcrError:
        raise
    except ImportError as e:
        raise GemmaOcrError(f"--storage {mask(url)}: missing database driver ({e}); install it (e.g. psycopg2-binary)") from None
    except Exception as e:  # sqlalchemy.exc.OperationalError, ArgumentError, PermissionError ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GemmaOcrError(
            f"cannot open study storage {mask(url)}: {first} (check the URL, that the server is running, "
            "credentials and file permissions)"
        ) from None


def _sqlite_wal(storage: RDBStorage) -> None:
    """Write-ahead logging for SQLite: commits without a sync each, readers never block the writer."""
    import sqlalchemy

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # pooled connections were opened before the listener


def existing_storage(url: str) -> BaseStorage | None:
    """Open the storage behind ``url`` to read it; None (and nothing created) when its file does not exist."""
    url = normalize_url(url)
    path = journal_path(url) or sqlite_path(url)
    if path is not None and not path.is_file():
        return None
    return open_storage(url, heartbeat=False)


def study_exists(storage: BaseStorage, study_name: str) -> bool:
    """Whether ``study_name`` is already in ``storage``."""
    return any(s.study_name == study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False))


def _thread_lock(key: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(key, threading.Lock())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _sql_lock(url: str, study_name: str) -> Iterator[None]:
    import sqlalchemy

    key = int.from_bytes(hashlib.sha1(f"gemma-ocr-study:{study_name}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            elif engine.dialect.name in ("mysql", "mariadb"):
                name = f"gemma-ocr-{key & 0xFFFFFFFF:x}"
                conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, 600)"), {"n": name})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
            else:
                yield
    finally:
        engine.dispose()


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Hold a lock shared by every worker of ``study_name`` on ``url`` (threads, processes, machines).

    File storages (SQLite, journal) lock a ``.lock`` file beside the data; PostgreSQL/MySQL use an
    advisory lock on the server. Held only for the instant a worker claims its next trial.
    """
    url = normalize_url(url)
    started = time.monotonic()
    with _thread_lock(f"{url}|{study_name}"):
        path = journal_path(url) or sqlite_path(url)
        if path is not None:
            ctx = _file_lock(path.with_name(f".{path.name}.{study_name}.lock"))
        elif url.startswith(("postgresql", "postgres", "mysql", "mariadb")):
            ctx = _sql_lock(url, study_name)
        else:
            ctx = contextlib.nullcontext()
        with ctx:
            waited = time.monotonic() - started
            if waited > 5:
                log.debug("waited %.1fs for the study lock", waited)
            yield
