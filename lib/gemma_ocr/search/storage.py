"""Where studies live: SQLite by default, a PostgreSQL/MySQL URL or a journal file for many workers.

``--storage`` forms:

* ``sqlite:///optuna_studies/NAME.db`` (default; one machine),
* ``postgresql://user:pass@host:5432/db`` / ``mysql+pymysql://...`` (many machines),
* ``journal:PATH`` (or a path ending in ``.log``/``.journal``): an append-only journal file,
  which several processes (or machines on a shared file system) can use without a database server.

:func:`study_lock` serialises the moment a worker claims its next trial, so that a study-wide budget
(a grid, ``--max-total-trials``) is never overrun by workers racing each other. A database server
that goes away (a restart, a fail-over) is waited for: :class:`Reconnect` retries new connections
with backoff for up to ``retry_timeout`` seconds before the error reaches the caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import inspect
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.layout import LAYOUT

log = logging.getLogger(__name__)

#: A running trial's worker records a heartbeat this often (seconds).
HEARTBEAT_INTERVAL_S = 15
#: A running trial without a heartbeat for this long belongs to a dead worker: it is failed and retried.
GRACE_PERIOD_S = 180
#: How long a worker waits for an unreachable database server before it stops (seconds). Kept below
#: the grace period minus one heartbeat interval, so that a worker that rode out an outage has its
#: heartbeat back before anyone could take its trial for a dead worker's.
STORAGE_RETRY_S = 120
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()
T = TypeVar("T")
#: What storage operations raise when the database is unreachable (Optuna wraps SQLAlchemy's errors).
STORAGE_ERRORS = (StorageInternalError, sqlalchemy.exc.SQLAlchemyError)
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def default_storage(study_name: str, studies_dir: str | Path = LAYOUT.studies) -> str:
    """``sqlite:///optuna_studies/{study}.db`` (relative to the working directory)."""
    return f"sqlite:///{Path(studies_dir) / f'{study_name}.db'}"


def normalize_url(url: str) -> str:
    """A PostgreSQL URL without a driver gets the installed one; other URLs are unchanged.

    ``postgres://`` becomes ``postgresql://``; SQLAlchemy 2.1 takes psycopg (3) for a bare
    ``postgresql://``, so when only psycopg2 is installed the URL names it (``postgresql+psycopg2://``).
    """
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
            raise GemmaOcrError(f"--storage journal: needs a file path, e.g. journal:{LAYOUT.studies / 'NAME.log'}")
        return Path(rest)
    if "://" not in url and url.endswith((".log", ".journal")):
        return Path(url)
    return None


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory SQLite)."""
    if url.startswith("sqlite:///") and url not in ("sqlite:///", "sqlite:///:memory:"):
        return Path(url[len("sqlite:///"):])
    return None


def server_url(url: str) -> bool:
    """Whether ``url`` names a database server (PostgreSQL, MySQL), whose outages workers wait out."""
    return normalize_url(url).startswith(("postgresql", "mysql", "mariadb"))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (the type name when it has none), for one-line reports."""
    for cause in (e, e.__cause__):  # Optuna wraps the driver's error in a generic StorageInternalError
        if cause is not None and not isinstance(cause, StorageInternalError) and str(cause).strip():
            return str(cause).strip().splitlines()[0]
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def connection_error(e: BaseException) -> bool:
    """Whether ``e`` says the storage could not be reached (rather than that a request was wrong)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Reconnect:
    """Opens the connections of a database server, waiting out an outage with exponential backoff.

    Used as SQLAlchemy's ``creator``: every new connection (after ``pool_pre_ping`` found a pooled
    one dead) comes through here. The outage clock is shared by all threads of the process; once it
    has run for ``timeout`` seconds each attempt fails at once, until the server answers again.
    """

    def __init__(self, url: str, timeout: float) -> None:
        probe = sqlalchemy.create_engine(url)  # only for the dialect and its connection arguments
        self._dialect = probe.dialect
        self._args, self._kwargs = probe.dialect.create_connect_args(probe.url)
        probe.dispose()
        self.timeout = timeout
        self.name = mask(url)
        self._down_since: float | None = None
        self._lock = threading.Lock()

    @property
    def exhausted(self) -> bool:
        """Whether the server has been unreachable for longer than ``timeout``."""
        down = self._down_since
        return down is not None and time.monotonic() - down >= self.timeout

    def __call__(self) -> Any:
        delay = 0.5
        while True:
            try:
                connection = self._dialect.connect(*self._args, **self._kwargs)
            except self._dialect.loaded_dbapi.OperationalError as e:
                with self._lock:
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        log.warning("study storage %s unreachable (%s); retrying for up to %.0f s",
                                    self.name, first_line(e), self.timeout)
                    left = self.timeout - (time.monotonic() - self._down_since)
                if left <= 0:
                    raise
                time.sleep(min(delay, left))
                delay = min(2 * delay, 10.0)
                continue
            with self._lock:
                if self._down_since is not None:
                    log.warning("study storage %s reachable again after %.0f s", self.name,
                                time.monotonic() - self._down_since)
                    self._down_since = None
            return connection


class _RDBStorage(RDBStorage):
    """RDBStorage whose heartbeats outlive a database outage.

    Optuna's heartbeat thread stops at the first error, after which the trial of a live worker would be
    taken for a dead one's once the server is back. Here a heartbeat that cannot be written is logged
    and the next one is tried an interval later: what lets workers ride out a database restart.
    """

    def __init__(self, url: str, *, reconnect: Reconnect | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.reconnect = reconnect
        self._missed: set[int] = set()  # trials whose last heartbeat did not reach the database

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except StorageInternalError as e:
            if not connection_error(e):
                raise
            if trial_id not in self._missed:
                self._missed.add(trial_id)
                log.warning("heartbeat not recorded (%s); trying again every %s s", first_line(e), self.heartbeat_interval)
            return
        if trial_id in self._missed:
            self._missed.discard(trial_id)
            log.info("heartbeats recorded again")


def open_storage(
    url: str,
    heartbeat: tuple[int, int, StaleCallback | None] | None = None,
    retry_timeout: float | None = None,
) -> BaseStorage:
    """Open (creating files/tables as needed) the storage behind ``url``; one clear line when it fails.

    ``heartbeat``: ``(interval, grace period, stale-trial callback)`` for the RDB storages (Optuna's own
    heartbeats; :mod:`gemma_ocr.search.liveness` keeps journal files' trials alive). ``retry_timeout``:
    how long a database server may be unreachable before an operation fails (see :class:`Reconnect`).
    """
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
        kwargs: dict[str, Any] = {}
        if heartbeat is not None:
            interval, grace, on_stale = heartbeat
            kwargs = {"heartbeat_interval": interval, "grace_period": grace}
            if on_stale is not None:
                kwargs[_STALE_CALLBACK_ARG] = on_stale
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if spath is not None else {"pool_pre_ping": True}
        reconnect = Reconnect(url, retry_timeout) if retry_timeout and server_url(url) else None
        if reconnect is not None:
            engine_kwargs["creator"] = reconnect
        with study_lock(url, "__tables__", reconnect):  # workers starting together would race to create the tables
            storage = _RDBStorage(url, reconnect=reconnect, engine_kwargs=engine_kwargs, **kwargs)
        if spath is not None:
            _sqlite_wal(storage)
        return storage
    except GemmaOcrError:
        raise
    except ImportError as e:
        raise GemmaOcrError(f"--storage {mask(url)}: missing database driver ({e}); install it (e.g. psycopg2-binary)") from None
    except Exception as e:  # sqlalchemy.exc.OperationalError, ArgumentError, PermissionError ...
        raise GemmaOcrError(
            f"cannot open study storage {mask(url)}: {first_line(e)} (check the URL, that the server is running, "
            "credentials and file permissions)"
        ) from None


def _stale_callback_arg() -> str:
    """RDBStorage's argument for the stale-trial callback (renamed in Optuna 4.9)."""
    params = inspect.signature(RDBStorage.__init__).parameters
    return "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"


_STALE_CALLBACK_ARG = _stale_callback_arg()


def retrying(call: Callable[[], T], what: str, attempts: int = 3) -> T:
    """``call()``, tried again when the storage connection broke under it (a server restarting mid-request).

    Waiting for a server that is down happens in :class:`Reconnect`; this covers the request that was
    in flight at the moment the connection died.
    """
    for attempt in range(attempts):
        try:
            return call()
        except STORAGE_ERRORS as e:
            if attempt == attempts - 1 or not connection_error(e):
                raise
            log.warning("%s: %s; trying again", what, first_line(e))
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _sqlite_wal(storage: RDBStorage) -> None:
    """Write-ahead logging for SQLite: commits without a sync each, readers never block the writer."""

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
    return open_storage(url)


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
def _sql_lock(url: str, study_name: str, reconnect: Reconnect | None = None) -> Iterator[None]:
    key = int.from_bytes(hashlib.sha1(f"gemma-ocr-study:{study_name}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      **({"creator": reconnect} if reconnect is not None else {}))
    if engine.dialect.name == "postgresql":
        lock, unlock = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
        args = {"k": key}
    elif engine.dialect.name in ("mysql", "mariadb"):
        lock, unlock = "SELECT GET_LOCK(:n, 600)", "SELECT RELEASE_LOCK(:n)"
        args = {"n": f"gemma-ocr-{key & 0xFFFFFFFF:x}"}
    else:
        lock = unlock = ""
    try:
        with engine.connect() as conn:
            if lock:
                conn.execute(sqlalchemy.text(lock), args)
            try:
                yield
            finally:
                if unlock:
                    try:
                        conn.execute(sqlalchemy.text(unlock), args)
                    except sqlalchemy.exc.DBAPIError as e:
                        if not e.connection_invalidated:
                            raise
                        # the server dropped the connection (a restart), and its session's locks with it
                        log.info("study lock went with its connection (%s)", first_line(e))
    finally:
        engine.dispose()


@contextlib.contextmanager
def study_lock(url: str, study_name: str, reconnect: Reconnect | None = None) -> Iterator[None]:
    """Hold a lock shared by every worker of ``study_name`` on ``url`` (threads, processes, machines).

    File storages (SQLite, journal) lock a ``.lock`` file beside the data; PostgreSQL/MySQL use an
    advisory lock on the server (connecting through ``reconnect`` when given). Held only for the
    instant a worker claims its next trial.
    """
    url = normalize_url(url)
    started = time.monotonic()
    with _thread_lock(f"{url}|{study_name}"):
        path = journal_path(url) or sqlite_path(url)
        if path is not None:
            ctx = _file_lock(path.with_name(f".{path.name}.{study_name}.lock"))
        elif server_url(url):
            ctx = _sql_lock(url, study_name, reconnect)
        else:
            ctx = contextlib.nullcontext()
        with ctx:
            waited = time.monotonic() - started
            if waited > 5:
                log.debug("waited %.1fs for the study lock", waited)
            yield
