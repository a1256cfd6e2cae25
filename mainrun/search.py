"""The study, the objective and the workers.

One trial = one full Mainrun training run. Optuna's RDB storage is the only coordinator:
workers (processes here, or on other machines) share a study through it; heartbeats turn a
dead worker's trial into a FAIL that is retried once; `--trials N` is the number of
finished (complete + pruned) trials the study ends with.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import logging
import multiprocessing
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from .config import RunConfig
from .data import Data, prepare_data
from .errors import (ConfigError, DataError, InputsChanged, SearchError, TrialFailed, TrialRefused,
                     WorkerBroken)
from .space import SearchSpace, load_space

# Heartbeats, their retry callback and metric names are stable in practice but still flagged
# experimental; the warnings would repeat in every worker.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

DEFAULT_STORAGE = "sqlite:///studies/mainrun.db"
METRIC = "val_loss"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A seven-epoch GPU trial takes tens of seconds to minutes: beat every 30 s, and call a
# worker dead after 2 minutes of silence.
HEARTBEAT_INTERVAL, HEARTBEAT_GRACE = 30, 120
GIB = 2**30
MAX_CONSECUTIVE_FAILURES = 5
# Refusals cost no training, but a space where almost nothing fits must still end.
MAX_CONSECUTIVE_REFUSALS = 25
EXIT_INPUTS_CHANGED = 2       # a worker's exit code (and the search's) when its inputs changed


def _not_an_expected_failure(record: logging.LogRecord) -> bool:
    # Optuna logs each trial exception with its traceback. A TrialFailed is expected: its reason
    # is recorded as fail_reason and printed on the trial's line already. So is an interrupt:
    # the worker says so in one line.
    if record.exc_info and isinstance(record.exc_info[1], (TrialFailed, KeyboardInterrupt)):
        return False
    return not record.getMessage().endswith("failed with value None.")     # the same failure's second line


logging.getLogger("optuna.study._optimize").addFilter(_not_an_expected_failure)


# ---------------------------------------------------------------------- storage
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


def machine_lock(kind: str, key: str, timeout: float = -1):
    """A file lock that every process on this machine shares for `key` (a storage, a study):
    in the temp folder, named by a digest, so nothing is left beside the user's files."""
    from filelock import FileLock
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return FileLock(str(Path(tempfile.gettempdir()) / f"mainrun-{kind}-{digest}.lock"), timeout=timeout)


def open_storage(settings: StorageSettings) -> optuna.storages.RDBStorage:
    """RDBStorage with heartbeats and one retry of a dead worker's trial. SQLite gets WAL
    (readers such as the dashboard never block the writers) and a long lock timeout."""
    parsed = check_storage_url(settings.url)
    db = _sqlite_file(parsed)

    def rdb_storage() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            settings.url, engine_kwargs=_engine_kwargs(parsed),
            heartbeat_interval=settings.heartbeat_interval, grace_period=settings.heartbeat_grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))

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


def export_command(storage_url: str, study_name: str) -> str:
    """The shell line that exports a study's best trial and trains it (names quoted for the shell)."""
    storage = "" if storage_url == DEFAULT_STORAGE else f" --storage {shlex.quote(redact(storage_url))}"
    return (f"mainrun-export --study {shlex.quote(study_name)}{storage} --out best.yaml && "
            "mainrun-train --config best.yaml")


def dashboard_command(storage_url: str, artifacts: Path) -> str:
    return f"optuna-dashboard {redact(storage_url)} --host 127.0.0.1 --port 8080 --artifact-dir {artifacts}"


# ---------------------------------------------------------------------- study
def tally(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def open_study(space: SearchSpace, storage, name: str, data: Data, base: RunConfig,
               seed: int | None = None, new_study: bool = False, echo=print) -> optuna.Study:
    """Create the study (with its identity and enqueued trials) or resume it. An existing
    study made from a different space or dataset is refused: its trials would not compare.
    With new_study, such a study's first NAME-k made from these inputs is resumed instead, or
    the next free NAME-k created, so that the same command run again resumes what it started."""
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage)
        mismatch = _mismatch(study, space, data)
        if mismatch:
            alt = _alternative(storage, name, existing, space, data)
            verb = "resume" if alt in existing else "start"
            if not new_study:
                raise SearchError(
                    f"study '{name}' already exists with a different {' and '.join(mismatch)}. "
                    f"Resume it with the same inputs, pick another name with --study, or pass --new-study "
                    f"to {verb} '{alt}'.")
            echo(f"search: --new-study: study '{name}' was made from other inputs; {verb} '{alt}'")
            return open_study(space, storage, alt, data, base, seed, echo=echo)
        echo(f"search: resuming study '{name}' ({_summary(tally(study))})")
        added = _enqueue_untried(study, space)
        if added:
            echo(f"search: enqueued {', '.join(added)}: known configs of the space not tried yet "
                 "(added to the file since, or cut short)")
        _set_policy(study, space, seed)
        return study
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:        # another search created it a moment ago
        return open_study(space, storage, name, data, base, seed, new_study, echo)
    try:
        study.set_metric_names([METRIC])
        study.set_user_attr("space_file", space.path)
        study.set_user_attr("space_yaml", space.text)
        study.set_user_attr("sampler", space.sampler["name"])
        study.set_user_attr("pruner", space.pruner["name"])
        study.set_user_attr("dataset", base.dataset)
        study.set_user_attr("titles_sha256", data.titles_sha256)
        study.set_user_attr("mainrun_version", version())
        added = _enqueue_untried(study, space)
        _save_dashboard_note(study, space, base, storage.url)
        study.set_user_attr("space_sha256", space.sha256)     # last: the study is complete (see _identity)
    except BaseException:
        # Ctrl-C or an error half-way: a study without its identity would block the same command
        # (it waits for the identity, then refuses), so it goes; it holds no trial results yet.
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except Exception as cleanup:           # the error that stopped the creation is the one to report
            echo(f"search: could not remove the half-made study '{name}' ({type(cleanup).__name__}: {cleanup}); "
                 f"delete it before rerunning: optuna delete-study --study-name {name} --storage '{redact(storage.url)}'")
        raise
    echo(f"search: created study '{name}'" + (f" with {len(added)} enqueued trials" if added else ""))
    _set_policy(study, space, seed)
    return study


def _alternative(storage, name: str, existing: set[str], space: SearchSpace, data: Data) -> str:
    """For --new-study: the first NAME-k made from these inputs, else the first free NAME-k. A
    NAME-k still being created (or never completed) is neither: it is not waited for here."""
    numbered = re.compile(rf"{re.escape(name)}-(\d+)")
    taken = sorted((int(m[1]), n) for n in existing if (m := numbered.fullmatch(n)) and int(m[1]) >= 2)
    for _, other in taken:
        study = optuna.load_study(study_name=other, storage=storage)
        if "space_sha256" in study.user_attrs and not _mismatch(study, space, data):
            return other
    return next(f"{name}-{i}" for i in itertools.count(2) if f"{name}-{i}" not in existing)


def _mismatch(study: optuna.Study, space: SearchSpace, data: Data) -> list[str]:
    """What differs between the inputs a study was made from and these; empty if nothing."""
    theirs = _identity(study)
    mismatch = []
    if theirs["space_sha256"] != space.sha256:
        mismatch.append(f"search space or policy (it was made from {theirs.get('space_file')} with sampler "
                        f"{theirs.get('sampler')} and pruner {theirs.get('pruner')}; --sampler and --pruner "
                        "replace the file's options with mainrun's defaults, which counts as a change)")
    if theirs.get("titles_sha256") not in (None, data.titles_sha256):     # None: made before it was recorded
        mismatch.append(f"dataset (it was made on {theirs.get('dataset')})")
    return mismatch


IDENTITY_WAIT = 60.0     # seconds a search waits for a study another search is creating


def _identity(study: optuna.Study) -> dict[str, Any]:
    """The study's user attrs, once its creator has written them all: `space_sha256` is written
    last, after the enqueued trials. A search started beside the creator waits for it, so that
    it neither skips the dataset and space check nor enqueues the known configs a second time."""
    deadline = time.time() + IDENTITY_WAIT
    while "space_sha256" not in (attrs := study.user_attrs):
        if time.time() >= deadline:
            raise SearchError(f"study '{study.study_name}' exists but was never completed: it has no search space "
                              "recorded (another tool made it, or the search that created it stopped at once). "
                              f"Pick another name with --study, or delete it: optuna delete-study --study-name "
                              f"{shlex.quote(study.study_name)} --storage URL")
        time.sleep(0.5)
    return attrs


def _enqueue_untried(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Enqueue the space's known configs that the study has not tried; return their labels.
    A new study gets all of them. A resumed one gets those added to the file since and those
    whose every trial was cut short: interrupted, or lost with its worker (failed for a stale
    heartbeat, with no reason of its own, also after Optuna's one retry died too). A known
    config that finished, failed on its own (OOM, refused, an error) or is still waiting or
    running is not enqueued again. (Optuna's skip_if_exists would also skip a cut-short one.)"""
    tried = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False)
             if not (t.state == TrialState.FAIL and t.user_attrs.get("fail_reason", "interrupted") == "interrupted")]
    added = []
    for label, params in space.enqueue:
        if params not in tried:
            study.enqueue_trial(params, user_attrs={"enqueued_as": label})
            tried.append(params)
            added.append(label)
    return added


def _set_policy(study: optuna.Study, space: SearchSpace, seed: int | None) -> None:
    study.sampler = space.make_sampler(seed)
    study.pruner = space.make_pruner()


def _save_dashboard_note(study: optuna.Study, space: SearchSpace, base: RunConfig, storage_url: str) -> None:
    from optuna_dashboard import save_note
    params = ", ".join(p.name for p in space.params)
    save_note(study, f"# {study.study_name}\n\n{space.description or ''}\n\n"
                     f"* space: `{space.path}` (samples {params})\n* dataset: `{base.dataset}`\n"
                     f"* metric: `{METRIC}` (Mainrun evaluate(), per character; lower is better)\n\n"
                     f"Export the best trial and train it:\n\n"
                     f"```\n{export_command(storage_url, study.study_name)}\n```\n")


def _summary(counts: dict[TrialState, int]) -> str:
    return (f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running, "
            f"{counts[TrialState.WAITING]} waiting")


# ---------------------------------------------------------------------- provenance
def version() -> str:
    from . import __version__
    return __version__


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------- objective
@dataclass
class WorkerContext:
    """Everything a worker needs; plain data so it crosses a process boundary."""
    space_path: str
    base: dict
    storage: StorageSettings
    study_name: str
    trials: int
    device: str
    cache_dir: str | None
    artifacts: str
    seed: int | None
    worker: int
    start_time: float
    finished_at_start: int
    threads: int | None = None
    sampler: str | None = None           # --sampler / --pruner: replace the space file's policy
    pruner: str | None = None
    memory_budget_gib: float | None = None   # per trial; None: the GPU's memory / workers_on_device
    workers_on_device: int = 1
    deadline: float | None = None        # --timeout: no trial starts after this time.time()
    space_sha256: str | None = None      # what the study was opened with: a worker re-reads both
    titles_sha256: str | None = None     # files and must find them unchanged


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def memory_budget(ctx: WorkerContext) -> tuple[int, str] | None:
    """(bytes one trial may use, where that number comes from), or None for no limit (the
    CPU, unless --memory-budget is given)."""
    import torch
    if ctx.memory_budget_gib is not None:
        budget = int(ctx.memory_budget_gib * GIB)
        return budget, f"--memory-budget is {_size(budget)} per trial"
    if not ctx.device.startswith("cuda"):
        return None
    props = torch.cuda.get_device_properties(torch.device(ctx.device))
    share = props.total_memory // ctx.workers_on_device
    return share, f"{props.name} has {_size(props.total_memory)} for {ctx.workers_on_device} worker(s), {_size(share)} each"


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.1f} MiB"


def make_objective(space: SearchSpace, base: RunConfig, data: Data, ctx: WorkerContext, admission):
    import torch

    from .train import ScoringError, estimate_memory_bytes, resolve_device, train
    store = optuna.artifacts.FileSystemArtifactStore(ctx.artifacts)
    commit = git_commit()
    device = resolve_device(ctx.device)
    budget = memory_budget(ctx)

    def refuse_if_too_big(trial: optuna.Trial, cfg: RunConfig) -> None:
        need = estimate_memory_bytes(cfg, data.vocab_size, device)
        trial.set_user_attr("memory_estimate_mb", round(need / 2**20))
        if budget is not None and need > budget[0]:
            reason = f"does not fit: needs ~{_size(need)} by estimate; {budget[1]}"
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("refused", True)
            raise TrialRefused(reason)

    def objective(trial: optuna.Trial) -> float:
        admission.release()                      # this trial now counts; the next worker may decide
        try:
            check_interrupted()
            return run_trial(trial)
        except (TrialFailed, WorkerBroken, optuna.TrialPruned):     # their reasons are recorded
            raise
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt) and not _Interrupt.signal_name:
                # a bug or an unexpected library error: say which
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:500])
                raise
            # Interrupted, wherever it landed: also when code it landed in wrapped it in an error
            # of its own (class creation turns it into "RuntimeError: Error calling __set_name__").
            trial.set_user_attr("fail_reason", "interrupted")
            _Interrupt.trial = trial.number
            raise KeyboardInterrupt(_Interrupt.signal_name or str(e)) from None

    def run_trial(trial: optuna.Trial) -> float:
        try:
            cfg = space.suggest(trial, base)
        except ConfigError as e:                 # the space validation should make this impossible
            trial.set_user_attr("fail_reason", str(e))
            raise TrialFailed(str(e)) from None
        trial.set_user_attr("config", cfg.to_dict())
        twin = _finished_twin(trial)
        if twin is not None:                     # a sampler can propose a finished point again
            trial.set_user_attr("duplicate_of", twin.number)
            if twin.state == TrialState.PRUNED:
                trial.set_user_attr("prune_reason", f"same params as pruned trial {twin.number}")
                raise optuna.TrialPruned(f"duplicate of trial {twin.number}")
            return twin.value
        refuse_if_too_big(trial, cfg)
        trial.set_user_attr("mainrun_version", version())
        trial.set_user_attr("git_commit", commit)
        workdir = Path(tempfile.mkdtemp(prefix="mainrun-trial-"))
        log_path = workdir / f"trial-{trial.number}.jsonl"
        last = {}

        def on_eval(index: int, step: int, val_loss: float) -> bool:
            check_interrupted()
            trial.report(val_loss, index)
            last.update(index=index, step=step, val_loss=val_loss)
            return trial.should_prune()

        try:
            result = train(cfg, data, device=ctx.device, on_eval=on_eval, log_path=log_path,
                           progress=False, echo=None)
        except torch.OutOfMemoryError as e:
            reason = "CUDA out of memory: " + str(e).splitlines()[0]
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason) from None
        except ScoringError as e:
            trial.set_user_attr("fail_reason", str(e))
            raise TrialFailed(str(e)) from None
        except torch.AcceleratorError as e:
            reason = "CUDA error: " + str(e).splitlines()[0]
            trial.set_user_attr("fail_reason", reason)
            raise WorkerBroken(reason) from None
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            _upload(store, trial, workdir, cfg, log_path)
        trial.set_user_attr("n_params", result.n_params)
        trial.set_user_attr("prep_seconds", round(result.prep_seconds, 3))
        trial.set_user_attr("train_seconds", round(result.train_seconds, 3))
        trial.set_user_attr("setup_seconds", round(result.setup_seconds, 3))
        trial.set_user_attr("tokens_per_second", round(result.tokens_per_second))
        if result.peak_memory_mb is not None:
            trial.set_user_attr("peak_memory_mb", round(result.peak_memory_mb, 1))
        trial.set_user_attr("device", f"{result.device} ({result.precision})")
        trial.set_user_attr("steps", result.steps)
        trial.set_user_attr("max_steps", result.max_steps)
        if result.diverged:
            trial.set_user_attr("prune_reason", f"diverged: {result.diverged}")
            raise optuna.TrialPruned(result.diverged)
        if result.stopped_early:
            reason = f"pruned at evaluation {last['index']} (step {last['step']}), val_loss {last['val_loss']:.4f}"
            trial.set_user_attr("prune_reason", reason)
            raise optuna.TrialPruned(reason)
        return result.val_loss

    return objective


def _finished_twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """A finished trial with exactly these params: re-running it would spend a full run
    on a known answer (Optuna's FAQ recipe for duplicate suggestions)."""
    for other in trial.study.get_trials(deepcopy=False, states=FINISHED):
        if other.params == trial.params and other.number != trial.number:
            return other
    return None


def _upload(store, trial: optuna.Trial, workdir: Path, cfg: RunConfig, log_path: Path) -> None:
    """The run config and the JSONL log as trial artifacts (shown by optuna-dashboard). A full
    or unwritable artifacts folder costs the artifacts, never the trial's result."""
    config_path = workdir / f"trial-{trial.number}-config.yaml"
    try:
        cfg.to_yaml(config_path, header=f"mainrun run config of trial {trial.number}")
        for path, mimetype in ((config_path, "application/yaml"), (log_path, "application/jsonl")):
            if path.exists():
                optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                                 study_or_trial=trial, mimetype=mimetype)
    except OSError as e:
        trial.set_user_attr("artifact_error", str(e)[:300])
        print(f"trial {trial.number}: its config and log were not saved as artifacts ({e}); "
              "its result is kept", flush=True)
    finally:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------- workers
class Admission:
    """Decides, one worker at a time on this machine, whether another trial is needed.
    The lock is held from the check until the new trial exists (the objective releases
    it), so two workers never both take the last slot. Across machines the check is
    still made, but unlocked (see README)."""

    def __init__(self, storage_url: str, study_name: str, trials: int, deadline: float | None = None):
        self.lock = machine_lock("admission", f"{storage_url}\0{study_name}")
        self.trials, self.deadline = trials, deadline

    def needed(self, study: optuna.Study) -> bool:
        """Acquire, then check. True: keep the lock (released when the trial starts)."""
        if _past(self.deadline):                  # --timeout: no new trials; running ones finish
            return False
        self.lock.acquire()
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial is retried, not counted as running
        counts = tally(study)
        # WAITING trials (enqueued, or retries of dead workers) are not counted: the next
        # trial a worker asks for *is* the oldest waiting one.
        in_hand = sum(counts[s] for s in (*FINISHED, TrialState.RUNNING))
        if in_hand < self.trials:
            return True
        self.lock.release()
        return False

    def release(self) -> None:
        if self.lock.is_locked:
            self.lock.release(force=True)


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, as a container or taskset limits it),
    not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Interrupt:
    """The signal that interrupted this worker, once one has. The handler raises KeyboardInterrupt
    wherever the main thread is; when that is inside a garbage-collector callback (gc runs them
    between trials and at any allocation), Python prints "Exception ignored" and drops it. So
    the worker also checks here at every evaluation and between trials (check_interrupted)."""
    signal_name: str | None = None
    trial: int | None = None             # the trial it stopped, recorded as FAIL "interrupted"


def _raise_interrupt(signum, _frame):
    # Record the first signal only: a second one (Ctrl-C reaches the parent and the workers)
    # must not interrupt the worker while it records the running trial as failed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _Interrupt.signal_name = signal.Signals(signum).name
    raise KeyboardInterrupt(_Interrupt.signal_name)


def check_interrupted() -> None:
    """Raise the worker's interrupt again if a signal came and its KeyboardInterrupt was dropped."""
    if _Interrupt.signal_name:
        raise KeyboardInterrupt(_Interrupt.signal_name)


@contextlib.contextmanager
def _worker_process_state(ctx: WorkerContext):
    """The process-wide settings a worker needs while it runs: its signal handlers and its share
    of the CPU threads. Put back afterwards, since the one-CPU-worker search runs in the caller's
    process (its later work, or the next test, must not inherit them)."""
    import torch
    _Interrupt.signal_name = _Interrupt.trial = None
    handlers = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    threads = torch.get_num_threads()
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        _Interrupt.signal_name = _Interrupt.trial = None


def _set_up_worker(ctx: WorkerContext, admission: Admission):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A later round of workers (after one died) re-reads both files: an edit since the search
    # started would train the rest of the study on other inputs.
    base = RunConfig.from_dict(ctx.base)
    try:
        space = load_space(ctx.space_path, ctx.sampler, ctx.pruner)
        data = prepare_data(base, ctx.cache_dir, log=lambda _m: None)    # a cache hit: prepared by the parent
    except (ConfigError, DataError) as e:
        raise InputsChanged(f"the search's inputs no longer load: {e}") from None
    for what, now, then in (("search space file " + ctx.space_path, space.sha256, ctx.space_sha256),
                            ("dataset " + base.dataset, data.titles_sha256, ctx.titles_sha256)):
        if then is not None and now != then:
            raise InputsChanged(f"the {what} changed while the search ran; its trials would not compare. "
                                "Put it back, or start a new study on the new inputs")
    study = optuna.load_study(study_name=ctx.study_name, storage=open_storage(ctx.storage))
    _set_policy(study, space, _sampler_seed(ctx.seed, ctx.worker, len(study.get_trials(deepcopy=False))))
    return study, make_objective(space, base, data, ctx, admission)


def _sampler_seed(seed: int | None, worker: int, trials_so_far: int) -> int | None:
    """A worker's sampler seed, from --seed, the worker and the trials the study already holds:
    reproducible for a fresh study, but a resumed study (or a later round of workers) does not
    replay the first run's suggestions, which would all be duplicates."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}/{worker}/{trials_so_far}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def run_worker(ctx: WorkerContext) -> int:
    """One worker: run trials until the study holds `ctx.trials` finished ones.
    Returns 0, or 130/143 when interrupted (the running trial is recorded as FAIL)."""
    with _worker_process_state(ctx):
        return _run_trials(ctx)


def _run_trials(ctx: WorkerContext) -> int:
    admission = Admission(ctx.storage.url, ctx.study_name, ctx.trials, ctx.deadline)
    try:
        study, objective = _set_up_worker(ctx, admission)
        failures = refusals = 0

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            nonlocal failures, refusals
            refused = trial.user_attrs.get("refused", False)
            failures = failures + 1 if trial.state == TrialState.FAIL and not refused else 0
            refusals = refusals + 1 if refused else 0
            print_trial_line(study, trial, ctx)
            check_interrupted()                   # a signal dropped in the gc.collect() after the trial
            if failures >= MAX_CONSECUTIVE_FAILURES:
                print(f"[w{ctx.worker}] stopping: {failures} trials in a row failed", flush=True)
                study.stop()
            elif refusals >= MAX_CONSECUTIVE_REFUSALS:
                print(f"[w{ctx.worker}] stopping: {refusals} trials in a row did not fit in memory; "
                      "narrow the space or raise --memory-budget", flush=True)
                study.stop()
            elif not admission.needed(study):
                study.stop()

        if admission.needed(study):
            study.optimize(objective, callbacks=[after_trial], catch=(TrialFailed,), gc_after_trial=True)
    except KeyboardInterrupt as e:
        name = str(e) or "SIGINT"
        stopped = f"; trial {_Interrupt.trial} is recorded as failed" if _Interrupt.trial is not None else ""
        print(f"[w{ctx.worker}] interrupted ({name}){stopped}", flush=True)
        return 143 if name == "SIGTERM" else 130
    except InputsChanged as e:
        print(f"[w{ctx.worker}] error: {e}", flush=True)
        return EXIT_INPUTS_CHANGED
    except WorkerBroken as e:
        print(f"[w{ctx.worker}] stopping after {e}; a fresh worker takes over", flush=True)
        return 3
    finally:
        admission.release()
    return 0


def _worker_process(ctx: WorkerContext) -> None:
    if ctx.device == "cpu":
        share_cores_politely()
    sys.exit(run_worker(ctx))


def share_cores_politely() -> None:
    """For CPU processes that share the cores (workers, bench --parallel): OpenMP threads that
    spin while they wait slow every other process down many times over; passive ones sleep.
    Takes effect in a process that has not started torch's thread pool yet (a spawned one)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# ---------------------------------------------------------------------- terminal output
def display_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The trial's params as a person reads them: an ordered-values index (head_dim_index,
    beta2_index) is shown as the value it stands for, taken from the trial's config."""
    cfg = trial.user_attrs.get("config") or {}
    shown: dict[str, Any] = {}
    for name, value in trial.params.items():
        base = name[:-len("_index")] if name.endswith("_index") else None
        if base and base in cfg:
            shown[base] = cfg[base]
        elif base == "head_dim" and cfg.get("n_head"):
            shown[base] = cfg["d_model"] // cfg["n_head"]
        else:
            shown[name] = value
    return shown


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def print_trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, ctx: WorkerContext) -> None:
    counts = tally(study)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    try:
        best = study.best_trial
        best_txt = f"best {best.value:.4f} (#{best.number})"
    except ValueError:
        best_txt = "best -"
    elapsed = time.time() - ctx.start_time
    done_here = max(finished - ctx.finished_at_start, 0)
    eta = _duration(elapsed / done_here * max(ctx.trials - finished, 0)) if done_here else "-"
    if trial.state == TrialState.COMPLETE:
        outcome = f"val_loss {trial.value:.4f} complete"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(max(trial.intermediate_values), float("nan")) \
            if trial.intermediate_values else float("nan")
        outcome = f"val_loss {last:.4f} pruned at eval {trial.last_step}"
    else:
        outcome = f"FAILED ({trial.user_attrs.get('fail_reason', 'see log')})"
    params = " ".join(f"{k}={_fmt(v)}" for k, v in display_params(trial).items())
    print(f"[w{ctx.worker}] trial {trial.number:>3} | {outcome} | {best_txt} | {finished}/{ctx.trials} finished | "
          f"{_duration(elapsed)} elapsed, ETA {eta} | {params}", flush=True)


def print_summary(study: optuna.Study, storage_url: str, artifacts: Path, top: int = 5) -> None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    done.sort(key=lambda t: t.value)
    print(f"\nstudy '{study.study_name}': {_summary(tally(study))}")
    if done:
        print(f"{'trial':>5}  {'val_loss':>8}  {'train s':>7}  params")
        for t in done[:top]:
            params = " ".join(f"{k}={_fmt(v)}" for k, v in display_params(t).items())
            print(f"{t.number:>5}  {t.value:>8.4f}  {t.user_attrs.get('train_seconds', float('nan')):>7.1f}  {params}")
    print("\nnext:")
    print(f"  {dashboard_command(storage_url, artifacts)}")
    print(f"  {export_command(storage_url, study.study_name)}")


# ---------------------------------------------------------------------- the search
@dataclass
class SearchOptions:
    space: str
    trials: int = 40
    storage: StorageSettings = None  # type: ignore[assignment]
    study: str | None = None
    dataset: str | None = None
    device: str = "auto"
    jobs: int = 1
    gpus: list[int] | None = None
    jobs_per_gpu: int = 1
    seed: int | None = None
    new_study: bool = False
    cache_dir: str | None = None
    artifacts: str | None = None
    sampler: str | None = None
    pruner: str | None = None
    memory_budget_gib: float | None = None
    timeout: float | None = None         # seconds after which no new trial starts

    def uses_gpu(self) -> bool:
        """Whether the workers train on GPUs: named ones, or any the machine has (device auto)."""
        import torch
        return bool(self.gpus) or self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())

    def base_config(self, space: SearchSpace) -> RunConfig:
        """What every trial starts from: the space's fixed fields, then --dataset."""
        return RunConfig.from_dict({"dataset": self.dataset} if self.dataset else {},
                                   base=RunConfig.from_dict(space.fixed))


def run_search(opts: SearchOptions) -> int:
    """Prepare the data once, open the study, run workers until it holds `opts.trials`
    finished trials. Returns the process exit code."""
    space = load_space(opts.space, opts.sampler, opts.pruner)       # validated before anything exists
    base = opts.base_config(space)
    gpu = opts.uses_gpu()
    if not gpu and not space.cpu_ok:
        print("!" * 78 + "\n! WARNING: no GPU found. Each trial is a full seven-epoch run; on the CPU a search\n"
              "! of this space takes days. Use a machine with a GPU, or search_spaces/smoke.yaml to try it.\n"
              + "!" * 78, flush=True)
    devices = _worker_devices(opts, gpu)
    check_storage_url(opts.storage.url)                             # a malformed URL fails before the data work
    data = prepare_data(base, opts.cache_dir)                       # once per study: workers hit the cache
    artifacts = artifact_dir(opts.storage.url, opts.artifacts)
    _check_folder_can_be_made(artifacts)                            # before a study exists that it would serve
    storage = open_storage(opts.storage)                            # creates nothing if the data is unusable
    name = opts.study or Path(opts.space).stem
    study = open_study(space, storage, name, data, base, opts.seed, opts.new_study)
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"--artifacts {artifacts}: cannot make the folder ({e.strerror})") from None
    print(f"search: watch it live with\n  {dashboard_command(opts.storage.url, artifacts)}", flush=True)

    start, finished_at_start = time.time(), _finished(study)
    if finished_at_start >= opts.trials:
        print(f"search: study '{study.study_name}' already holds {finished_at_start} finished trials, at least "
              f"--trials {opts.trials}; nothing to run (raise --trials to run more)", flush=True)
    threads = max(1, usable_cpus() // len(devices)) if not gpu else None
    contexts = [WorkerContext(space_path=opts.space, base=base.to_dict(), storage=opts.storage,
                              study_name=study.study_name, trials=opts.trials, device=dev,
                              cache_dir=opts.cache_dir, artifacts=str(artifacts), seed=opts.seed, worker=i,
                              start_time=start, finished_at_start=finished_at_start, threads=threads,
                              sampler=opts.sampler, pruner=opts.pruner, memory_budget_gib=opts.memory_budget_gib,
                              workers_on_device=devices.count(dev),
                              deadline=start + opts.timeout if opts.timeout else None,
                              space_sha256=space.sha256, titles_sha256=data.titles_sha256)
                for i, dev in enumerate(devices)]
    code = _run_rounds(study, contexts, opts.trials)
    print_summary(study, opts.storage.url, artifacts)
    return code


def _check_folder_can_be_made(folder: Path) -> None:
    """Refuse a folder that cannot exist (a file on its path) or cannot be written, creating nothing."""
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise SearchError(f"--artifacts {folder}: {existing} is a file, so the folder cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SearchError(f"--artifacts {folder}: {existing} is not writable")


# The fields that decide a model's size and memory: what --dry-run names for the largest corner.
MEMORY_FIELDS = ("d_model", "n_layer", "n_head", "mlp", "mlp_ratio", "vocab_size", "block_size", "batch_size",
                "optimizer", "pos_emb", "qk_norm", "tie_embeddings", "precision")


def plan_search(opts: SearchOptions) -> int:
    """--dry-run: what the search would sample and how big its models get, from the space file
    alone. Nothing is created, no data is read and nothing is trained."""
    import torch

    from .train import estimate_memory_bytes, model_shape

    space = load_space(opts.space, opts.sampler, opts.pruner)
    base = opts.base_config(space)
    on_gpu = opts.uses_gpu() or not space.cpu_ok          # a GPU space is sized for the GPU it will run on
    device = torch.device("cuda" if on_gpu else "cpu")

    def need(cfg: RunConfig) -> int:
        return estimate_memory_bytes(cfg, cfg.vocab_size, device)

    def size(cfg: RunConfig) -> str:
        n_params, _ = model_shape(cfg, cfg.vocab_size)
        count = f"{n_params / 1e6:.1f}M" if n_params >= 1e6 else f"{n_params:,}"
        return f"{count:>8} params  ~{_size(need(cfg))}"

    def policy(spec: dict[str, Any]) -> str:
        options = {k: v for k, v in spec.items() if k != "name"}
        return spec["name"] + (f" {options}" if options else "")

    print(f"dry run of {opts.space}: study '{opts.study or Path(opts.space).stem}', {opts.trials} trials "
          f"(nothing is created, read or trained)")
    print(f"sampler {policy(space.sampler)}; pruner {policy(space.pruner)}")
    if space.fixed:
        print("fixed: " + ", ".join(f"{k}={_fmt(v)}" for k, v in space.fixed.items()))
    print(f"params ({len(space.params)}):")
    for p in space.params:
        print(f"  {p.name:<14}{p.describe()}")
    where = "a GPU, bf16 autocast" if on_gpu else "the CPU, fp32"
    print(f"model sizes and peak memory by estimate (on {where}; vocab {base.vocab_size} as configured):")
    for label, params in space.enqueue:
        print(f"  {'enqueued ' + label:<28}{size(space.suggest(optuna.trial.FixedTrial(params), base))}")
    corners = [space.to_config(values, base) for values in space.corners(base)]
    needs = [need(c) for c in corners]
    largest = corners[needs.index(max(needs))]
    shape = " ".join(f"{k}={_fmt(getattr(largest, k))}" for k in MEMORY_FIELDS if getattr(largest, k) != getattr(base, k))
    print(f"  {'largest of ' + str(len(corners)) + ' corners':<28}{size(largest)}  {shape}")
    if opts.memory_budget_gib:
        over = sum(n > opts.memory_budget_gib * GIB for n in needs)
        print(f"--memory-budget {opts.memory_budget_gib:g} GiB: {over} of the {len(corners)} corners would be refused")
    return 0


def _worker_devices(opts: SearchOptions, gpu: bool) -> list[str]:
    """One device name per worker, each checked to exist here before anything is created."""
    from .train import resolve_device
    if opts.gpus:
        devices = [f"cuda:{g}" for g in opts.gpus for _ in range(opts.jobs_per_gpu)]
    else:
        devices = [("cuda" if gpu else "cpu") if opts.device == "auto" else opts.device] * max(1, opts.jobs)
    for name in sorted(set(devices)):
        resolve_device(name)
    return devices


def _finished(study: optuna.Study) -> int:
    counts = tally(study)
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]


def _run_rounds(study: optuna.Study, contexts: list[WorkerContext], trials: int) -> int:
    """Run the workers; if they stop short (a worker died, a trial failed), fail stale
    trials once their heartbeat grace has passed and run another round."""
    while _finished(study) < trials:
        before = _finished(study)
        codes = _run_workers(contexts)
        if any(c in (130, 143) for c in codes):
            code = 143 if 143 in codes else 130
            print(f"search: interrupted ({'SIGTERM' if code == 143 else 'SIGINT'}); the same command resumes "
                  "the study", flush=True)
            return code
        if _finished(study) >= trials:
            break
        if EXIT_INPUTS_CHANGED in codes:        # the worker said why; another round would say it again
            return EXIT_INPUTS_CHANGED
        if _past(contexts[0].deadline):
            print(f"search: --timeout reached with {_finished(study)} of {trials} trials finished; "
                  "the same command resumes the study", flush=True)
            break
        running = tally(study)[TrialState.RUNNING]
        if running:
            print(f"search: waiting for {running} running trial(s) (another machine, or a dead worker whose "
                  "heartbeat has not yet expired)", flush=True)
            if not _wait_for_running(study, contexts[0].storage):
                continue
        elif _finished(study) == before:
            print(f"search: no trial finished in the last round (exit codes {codes}); giving up", flush=True)
            return 1
    return 0


def _wait_for_running(study: optuna.Study, settings: StorageSettings) -> bool:
    """Wait until no trial is RUNNING, failing (and so retrying) those whose worker died.
    A worker killed between creating a trial and its first heartbeat leaves a trial that
    Optuna never considers stale; one heartbeat recorded here gives it a clock."""
    storage = study._storage
    optuna.storages.fail_stale_trials(study)          # those whose heartbeat expired already: now
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.record_heartbeat(trial._trial_id)     # Optuna exposes trial ids only privately
    deadline = time.time() + settings.heartbeat_grace * 3
    while time.time() < deadline:
        optuna.storages.fail_stale_trials(study)
        if tally(study)[TrialState.RUNNING] == 0:
            return True
        time.sleep(min(5.0, settings.heartbeat_interval))
    return False


def _run_workers(contexts: list[WorkerContext]) -> list[int]:
    # One CPU worker runs in this process. GPU workers are always processes of their own, so
    # that a CUDA error ends with its process and the next round starts on a clean context.
    if len(contexts) == 1 and not contexts[0].device.startswith("cuda"):
        return [run_worker(contexts[0])]
    mp = multiprocessing.get_context("spawn")
    procs = [mp.Process(target=_worker_process, args=(ctx,), name=f"mainrun-w{ctx.worker}") for ctx in contexts]

    stopping: list[int] = []

    def forward(signum, _frame):
        stopping.append(signum)
        for p in procs:
            if p.is_alive():                  # False for one not started yet
                os.kill(p.pid, signum)
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        # Inside the try, with the handler set: a signal while the workers start must reach those
        # already started, and no worker may start after it.
        for p in procs:
            if stopping:
                break
            p.start()
        if stopping:                          # again, for one that was starting when it came
            forward(stopping[0], None)
        for p in procs:
            while p.is_alive():
                p.join(timeout=0.5)
    except KeyboardInterrupt:                 # let the workers record their running trials as failed
        forward(signal.SIGINT, None)
        for p in procs:
            if p.pid is not None:             # started (a Ctrl-C may land between two starts)
                p.join(timeout=30)
        return [130]
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopping:
        return [143]
    codes = [p.exitcode if p.exitcode is not None else 1 for p in procs]
    return [143 if c == -signal.SIGTERM else c for c in codes]


# ---------------------------------------------------------------------- export
def export_trial(storage_url: str, study_name: str, out: str,
                 trial_number: int | None = None) -> optuna.trial.FrozenTrial:
    """Write the run config of the best (or the given) trial to `out`; return that trial."""
    study = open_study_readonly(storage_url, study_name)
    if trial_number is None:
        try:
            trial = study.best_trial
        except ValueError:
            raise SearchError(f"study '{study_name}' has no complete trial yet") from None
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
        if not matches:
            raise SearchError(f"study '{study_name}' has no trial {trial_number}")
        trial = matches[0]
    if "config" not in trial.user_attrs:
        raise SearchError(f"trial {trial.number} has no recorded config (state {trial.state.name})")
    cfg = RunConfig.from_dict(trial.user_attrs["config"], source=f"trial {trial.number}")
    if trial.state == TrialState.COMPLETE:
        outcome, run = f"complete, val_loss {trial.value:.6f}", "reproduce"
    else:          # a pruned trial's value is its last intermediate one, not a full run's
        outcome, run = f"{trial.state.name.lower()}, no full-run val_loss", "train it"
    header = (f"mainrun run config exported from study '{study_name}', trial {trial.number} ({outcome})\n"
              f"exported {time.strftime('%Y-%m-%d %H:%M:%S')} by mainrun {version()}\n"
              f"{run}: mainrun-train --config {Path(out).name}")
    try:
        cfg.to_yaml(out, header=header)
    except OSError as e:
        raise SearchError(f"cannot write {out}: {e.strerror or e}") from None
    return trial

