"""Study storage: the database URL a search, an export or a report is given, opened for writing
(a search: heartbeats, retries of a dead worker's trial, WAL for SQLite) or read-only (export,
report: nothing created), the locks that processes share (a file on one machine; a PostgreSQL
advisory lock across machines), and the folders where trial artifacts and checkpoints live.
Passwords never appear in a message.
"""
from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from .errors import SearchError

DEFAULT_STORAGE = "sqlite:///studies/mainrun.db"
# A seven-epoch GPU trial takes tens of seconds to minutes: beat every 30 s, and call a
# worker dead after 2 minutes of silence.
HEARTBEAT_INTERVAL, HEARTBEAT_GRACE = 30, 120
# A lost trial is retried (each retry resumes from the latest checkpoint) until this many of its
# attempts were lost without progress (see RetryLostTrials).
MAX_RETRY = 3


def redact(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    from sqlalchemy.engine import make_url
    try:
        parsed = make_url(url)
    except Exception:
        return "<storage URL>"
    if "password" in parsed.query:               # libpq also takes it as ?password=...
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True).replace("password=%2A%2A%2A", "password=***")


@dataclass
class StorageSettings:
    url: str = DEFAULT_STORAGE
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    heartbeat_grace: int = HEARTBEAT_GRACE


def _parse_url(url: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        return make_url(url)
    except (ArgumentError, ValueError):     # ValueError: e.g. a port that is not a number
        raise SearchError(f"--storage {redact(url)}: not a SQLAlchemy URL (e.g. sqlite:///studies/mainrun.db "
                          "or postgresql+psycopg://user@host/db; write @, : and / in a password as %40, %3A "
                          "and %2F)") from None


def _engine_kwargs(parsed) -> dict[str, Any]:
    # SQLite: writers wait up to 60 s for each other instead of failing "database is locked"
    return {"connect_args": {"timeout": 60}} if parsed.get_backend_name() == "sqlite" else {"pool_pre_ping": True}


def _storage_error(what: str, url: str, parsed, error: Exception) -> SearchError:
    """A SearchError that says what failed and why, never with the password in it."""
    root = _root_cause(error)
    reason = (str(getattr(root, "orig", None) or root).strip().splitlines() or [""])[0]
    for password in (parsed.password, parsed.query.get("password")):
        if password and isinstance(password, str):
            reason = reason.replace(password, "***")
    hint = " (is it an Optuna study database?)" if "no such table" in reason else ""
    return SearchError(f"{what} {redact(url)}: {type(root).__name__}: {reason}{hint}")


def _sqlite_file(parsed) -> Path | None:
    """The database file of a SQLite URL; None for another backend or an in-memory database."""
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def check_storage_url(url: str):
    """The parsed URL of a storage a search can use; checked before any work, nothing opened."""
    from sqlalchemy.exc import NoSuchModuleError
    parsed = _parse_url(url)
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise SearchError(f"--storage {redact(url)}: unknown database kind '{parsed.drivername}' (use sqlite:///FILE "
                          "or postgresql+psycopg://user@host/db)") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise SearchError(f"--storage {redact(url)}: its driver is not installed ({e}); for PostgreSQL "
                          "use postgresql+psycopg:// and pip install -e '.[postgres]'") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.host:
            raise SearchError(f"--storage {redact(url)}: a SQLite URL has no host; write sqlite:///relative/path.db "
                              "(three slashes) or sqlite:////absolute/path.db (four)")
        if _sqlite_file(parsed) is None:
            raise SearchError(f"--storage {redact(url)}: an in-memory SQLite database lives in one process "
                              "and is gone at exit, so workers cannot share it and nothing can resume; use a "
                              f"file, e.g. {DEFAULT_STORAGE}")
    return parsed


def study_lock(storage_url: str, kind: str, study_name: str):
    """A lock that every process using this study holds in turn. On PostgreSQL an advisory lock in
    the database itself, so processes on different machines exclude each other too; on SQLite (a
    file on one machine) a machine_lock. Both: acquire(), release(force=...), is_locked, and `with`."""
    from sqlalchemy.engine import make_url
    if make_url(storage_url).get_backend_name() == "postgresql":
        return AdvisoryLock(storage_url, f"mainrun-{kind}\0{study_name}")
    return machine_lock(kind, f"{storage_url}\0{study_name}")


class AdvisoryLock:
    """A session-level PostgreSQL advisory lock (pg_advisory_lock) on a connection of its own, held
    from acquire() to release(). A process that dies while holding it loses its connection, and the
    server releases the lock with the session."""

    def __init__(self, url: str, key: str):
        import sqlalchemy
        self.key = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        self._engine = sqlalchemy.create_engine(url, pool_size=1, pool_pre_ping=True,
                                                isolation_level="AUTOCOMMIT")
        self._conn = None

    @property
    def is_locked(self) -> bool:
        return self._conn is not None

    def acquire(self) -> None:
        from sqlalchemy import text
        if self._conn is not None:
            return
        conn = self._engine.connect()
        try:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def release(self, force: bool = False) -> None:
        from sqlalchemy import text
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        except Exception:        # the connection is gone, and the lock with its session
            conn.invalidate()
        finally:
            conn.close()

    def __enter__(self) -> "AdvisoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def machine_lock(kind: str, key: str, timeout: float = -1):
    """A file lock that every process on this machine shares for `key` (a storage, a study):
    in the temp folder, named by a digest, so nothing is left beside the user's files."""
    from filelock import FileLock
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return FileLock(str(Path(tempfile.gettempdir()) / f"mainrun-{kind}-{digest}.lock"), timeout=timeout)


class RetryLostTrials:
    """The heartbeat callback: Optuna's RetryHeartbeatStaleTrialCallback (a WAITING copy of the
    lost trial, with its retry_history), given up only once MAX_RETRY + 1 attempts were lost
    without progress. An attempt progressed if it saved a checkpoint past the step it started
    from (user attrs `checkpoint_step` and `resumed_from_step`, which a retry inherits): a trial
    whose machines keep dying goes on, while a config that kills its worker before its first
    checkpoint (the kernel's OOM killer, say) stops after a few attempts."""

    def __init__(self, max_retry: int = MAX_RETRY):
        self.max_retry = max_retry
        with warnings.catch_warnings():                    # flagged experimental, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """Enqueue the lost `trial`'s retry, unless its config is given up. True if enqueued."""
        chain = {*trial.system_attrs.get("retry_history", []), trial.number}
        attempts = [t for t in study.get_trials(deepcopy=False) if t.number in chain and t.number != trial.number]
        stuck = sum(not _progressed(t) for t in (*attempts, trial))
        retrying = stuck <= self.max_retry
        if retrying:
            self._retry(study, trial)
        return retrying


def retry_orphaned_losses(study: optuna.Study) -> int:
    """Enqueue the missing retry of each lost trial (FAIL with no fail_reason) that has none: the
    process that failed it died before enqueueing it, since Optuna's fail_stale_trials writes the
    FAIL and only then calls RetryLostTrials (found by the chaos soak on PostgreSQL). Call it under
    the admission lock: every fail_stale_trials in mainrun runs under it (Optuna's own, at each
    trial's start, too: the admission holds the lock until the trial starts), so no living process
    is between those two writes. Returns how many it enqueued."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}
    retry = RetryLostTrials()
    return sum(retry(study, t) for t in trials if t.state == optuna.trial.TrialState.FAIL
               and "fail_reason" not in t.user_attrs and t.number not in retried)


def _progressed(attempt: optuna.trial.FrozenTrial) -> bool:
    return attempt.user_attrs.get("checkpoint_step", 0) > attempt.user_attrs.get("resumed_from_step", 0)


def open_storage(settings: StorageSettings) -> optuna.storages.RDBStorage:
    """RDBStorage with heartbeats and retries of a dead worker's trial (RetryLostTrials). SQLite gets WAL
    (readers such as the dashboard never block the writers) and a long lock timeout."""
    parsed = check_storage_url(settings.url)
    db = _sqlite_file(parsed)

    def rdb_storage() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            settings.url, engine_kwargs=_engine_kwargs(parsed),
            heartbeat_interval=settings.heartbeat_interval, grace_period=settings.heartbeat_grace,
            heartbeat_stale_trial_callback=RetryLostTrials())

    # Optuna sets up a new database (tables, version row, alembic stamp) in several unlocked
    # steps, so two searches opening it at once can trip over each other. A SQLite file lives
    # on one machine: its setup is serialised by a lock. A server is tried again, with backoff.
    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            with machine_lock("db", str(db.resolve()), timeout=120):
                with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")      # persists in the file
                return rdb_storage()
        for delay in (1, 2, 4, None):
            try:
                return rdb_storage()
            except Exception:
                if delay is None:
                    raise
                time.sleep(delay)
    except Exception as e:  # driver errors vary; a corrupt or read-only SQLite file lands here too
        raise _storage_error("cannot open the study storage", settings.url, parsed, e) from None


def drop_idle_connections(storage: optuna.storages.BaseStorage) -> None:
    """Close the storage's pooled connections (an RDBStorage, or a study's cache of one: a trial's
    `storage`); the next call opens fresh ones. For after an interrupt: one that lands inside a
    read, between the SELECT and the fetch of its rows, leaves that SQLite connection holding the
    read's snapshot (Python's sqlite3 keeps the half-read statement open through the pool's
    rollback), and its next write fails "database is locked" at once, whatever the busy timeout,
    if anyone wrote since. Connections checked out (the heartbeat thread's) are left alone."""
    getattr(storage, "_backend", storage).engine.dispose()


def open_study_readonly(storage_url: str, study_name: str) -> optuna.Study:
    """Load an existing study without creating anything: a missing SQLite file, a database
    without Optuna's tables or an unknown study name is a SearchError (exit 2), not a new,
    empty study."""
    parsed = _parse_url(storage_url)
    if parsed.get_backend_name() == "sqlite":
        db = _sqlite_file(parsed)
        if db is None:
            raise SearchError(f"--storage {redact(storage_url)}: an in-memory database holds no study")
        if not db.is_file():
            raise SearchError(f"no study database at {parsed.database} (--storage {redact(storage_url)})")
    try:
        storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=_engine_kwargs(parsed),
                                             skip_table_creation=True)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception as e:  # driver errors vary
        raise _storage_error("cannot read studies from", storage_url, parsed, e) from None
    if study_name not in names:
        raise SearchError(f"no study '{study_name}' in {redact(storage_url)} "
                          f"(studies: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())


def _root_cause(e: BaseException) -> BaseException:
    """Optuna wraps driver errors (StorageInternalError); the first SQLAlchemy/driver error in
    the chain says what is wrong."""
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        if hasattr(e, "orig"):
            return e
        e = e.__cause__ or e.__context__
    return seen[-1]


def artifact_dir(storage_url: str, override: str | None = None) -> Path:
    """Trial artifacts live beside the database: <db folder>/artifacts for SQLite."""
    if override:
        return Path(override)
    from sqlalchemy.engine import make_url
    db = _sqlite_file(make_url(storage_url))
    return db.parent / "artifacts" if db is not None else Path("studies") / "artifacts"


def checkpoint_dir(storage_url: str, artifacts: str | None = None, override: str | None = None) -> Path:
    """Trial checkpoints live beside the artifacts folder (<db folder>/checkpoints for SQLite). For
    workers on several machines, point --checkpoint-dir at a folder they all mount."""
    return Path(override) if override else artifact_dir(storage_url, artifacts).parent / "checkpoints"
