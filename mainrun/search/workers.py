"""Workers: processes that each take trials from one study until it holds enough finished ones.

Optuna's RDB storage is the only coordinator: workers here, or on other machines, share a study
through it; heartbeats turn a dead worker's trial into a FAIL that is retried (from its latest
checkpoint, see mainrun.checkpoint). `Admission` lets one worker at a time decide whether another
trial is needed (on SQLite one machine's workers, on PostgreSQL every machine's), so they never
overshoot `trials`. `run_rounds` starts the workers (GPU workers always as processes of their
own), forwards SIGTERM to them, and starts another round if they stop short.

What a trial *is* comes with the context: `WorkerContext.objective` is plain data that the worker
`build`s into its objective, so the same machinery (processes, heartbeats and retry, signals,
admission, the trial line) runs any objective, not only the search's.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Protocol

import optuna
from optuna.trial import TrialState

from ..errors import InputsChanged, TrialFailed, WorkerBroken
from ..storage import StorageSettings, drop_idle_connections, open_storage, retry_orphaned_losses, study_lock
from .console import Echo, say, trial_line, worker_echo
from .interrupts import Interrupt, check_interrupted, interrupts_caught
from .study import FINISHED, best_trial, finished_count, tally

MAX_CONSECUTIVE_FAILURES = 5
# Refusals cost no training, but a space where almost nothing fits must still end.
MAX_CONSECUTIVE_REFUSALS = 25
EXIT_INPUTS_CHANGED = 2       # a worker's exit code (and the search's) when its inputs changed
EXIT_WORKER_BROKEN = 3        # a worker's exit code after a CUDA error: a fresh process takes over

Objective = Callable[[optuna.Trial], float]


class ObjectiveFactory(Protocol):
    """What a trial is, as plain data: it crosses the process boundary, and each worker builds
    the objective from it once (loading its data, seeding the study's sampler)."""

    def build(self, study: optuna.Study, ctx: WorkerContext) -> Objective: ...


@dataclass
class WorkerContext:
    """Everything a worker needs; plain data so it crosses a process boundary."""
    objective: ObjectiveFactory
    storage: StorageSettings
    study_name: str
    trials: int                          # finished trials the study should end with
    device: str
    artifacts: str
    worker: int
    start_time: float
    finished_at_start: int
    threads: int | None = None
    memory_budget_gib: float | None = None   # per trial; None: the GPU's memory / workers_on_device
    workers_on_device: int = 1
    deadline: float | None = None        # --timeout: no trial starts after this time.time()
    tensorboard: str | None = None       # --tensorboard: each trial's event files in DIR/<study>/trial-<n>
    enqueued_only: bool = False          # the objective runs enqueued trials only: ask only while one waits
    checkpoints: str | None = None       # trial checkpoints' folder (a lost trial's retry resumes); None: none


class Admission:
    """Decides, one worker at a time, whether another trial is needed. The lock (a file lock on
    this machine for SQLite; for PostgreSQL an advisory lock in the database, which every machine
    shares) is held from the check until the new trial exists (the objective releases it), so two
    workers never both take the last slot."""

    def __init__(self, storage_url: str, study_name: str, trials: int, deadline: float | None = None,
                 enqueued_only: bool = False):
        self.lock = study_lock(storage_url, "admission", study_name)
        self.trials, self.deadline, self.enqueued_only = trials, deadline, enqueued_only
        self.running_when_admitted: set[int] | None = None   # trial numbers, at the check that admitted

    def needed(self, study: optuna.Study) -> bool:
        """Acquire, then check. True: keep the lock (released when the trial starts)."""
        if _past(self.deadline):                  # --timeout: no new trials; running ones finish
            return False
        self.running_when_admitted = None
        self.lock.acquire()
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial is retried, not counted as running
        counts = tally(study)
        # WAITING trials (enqueued, or retries of dead workers) are not counted: the next
        # trial a worker asks for *is* the oldest waiting one.
        in_hand = sum(counts[s] for s in (*FINISHED, TrialState.RUNNING))
        if in_hand < self.trials and retry_orphaned_losses(study):   # the slot goes to the lost config first
            counts = tally(study)
        # An objective that runs only enqueued trials (a confirmation's) would get a blank trial
        # of its own if it asked with none waiting: one failed for good leaves none to take.
        if in_hand < self.trials and (counts[TrialState.WAITING] or not self.enqueued_only):
            self.running_when_admitted = _running(study)
            return True
        self.lock.release()
        return False

    def asked_since(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        """The trial this worker's Optuna asked for after the admission, if the objective has not
        started it yet: no other worker can ask while the lock is held, so a trial RUNNING now that
        was not then is this worker's."""
        if not self.lock.is_locked or self.running_when_admitted is None:
            return []
        return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number not in self.running_when_admitted]

    def release(self) -> None:
        if self.lock.is_locked:
            self.lock.release(force=True)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def _running(study: optuna.Study) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


@dataclass
class LastTrial:
    """The trial the worker's objective is running or last ran, and how the objective ended. An
    interrupt inside the objective is recorded there; one that lands in Optuna's tell, after the
    objective returned, would leave the trial RUNNING (its result lost, and a resume waiting out
    its heartbeat grace) unless the worker tells that outcome itself."""
    trial: optuna.Trial | None = None
    outcome: tuple[TrialState, float | None] | None = None


# ---------------------------------------------------------------------- one worker
def run_worker(ctx: WorkerContext) -> int:
    """One worker: run trials until the study holds `ctx.trials` finished ones.
    Returns 0, or 130/143 when interrupted (the running trial is recorded as FAIL)."""
    with interrupts_caught(), _cpu_threads(ctx.threads), optuna_quieted():
        try:
            return _run_trials(ctx)
        finally:
            _stop_heartbeats_left_beating()


def _stop_heartbeats_left_beating() -> None:
    """Stop the trial heartbeat threads that nobody else will stop. An interrupt inside the entry
    of Optuna's `with` around a trial (Thread.start() waits there for the new thread) skips its
    exit: the thread beats on for a trial already recorded, and the process never exits, since
    it waits for that thread (3 workers in 305 hung so in a Ctrl-C fuzz). Optuna keeps no handle
    on the thread: it is found by its target, and its stop event is its last argument."""
    from optuna.storages._heartbeat import HeartbeatThread
    for thread in threading.enumerate():
        if getattr(thread, "_target", None) is HeartbeatThread._record_heartbeat:
            thread._args[-1].set()
            thread.join()


def _run_trials(ctx: WorkerContext) -> int:
    echo = worker_echo(ctx.worker)
    admission = Admission(ctx.storage.url, ctx.study_name, ctx.trials, ctx.deadline, ctx.enqueued_only)
    last = LastTrial()
    study = storage = None
    try:
        storage = open_storage(ctx.storage)
        study = optuna.load_study(study_name=ctx.study_name, storage=storage)
        objective = _admitted(ctx.objective.build(study, ctx), admission, storage, last)
        failures = refusals = 0

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            nonlocal failures, refusals
            refused = trial.user_attrs.get("refused", False)
            failures = failures + 1 if trial.state == TrialState.FAIL and not refused else 0
            refusals = refusals + 1 if refused else 0
            finished = finished_count(study)
            echo(trial_line(trial, best=best_trial(study), finished=finished, trials=ctx.trials,
                            elapsed=time.time() - ctx.start_time,
                            finished_here=max(finished - ctx.finished_at_start, 0)))
            check_interrupted()                   # a signal dropped in the gc.collect() after the trial
            if failures >= MAX_CONSECUTIVE_FAILURES:
                echo(f"stopping: {failures} trials in a row failed")
                study.stop()
            elif refusals >= MAX_CONSECUTIVE_REFUSALS:
                echo(f"stopping: {refusals} trials in a row did not fit in memory; "
                     "narrow the space or raise --memory-budget")
                study.stop()
            elif not admission.needed(study):
                study.stop()

        if admission.needed(study):
            study.optimize(objective, callbacks=[after_trial], catch=(TrialFailed,), gc_after_trial=True)
    except KeyboardInterrupt as e:
        return _interrupted(str(e) or "SIGINT", study, storage, admission, last, echo)
    except InputsChanged as e:
        echo(f"error: {e}")
        return EXIT_INPUTS_CHANGED
    except WorkerBroken as e:
        echo(f"stopping after {e}; a fresh worker takes over")
        return EXIT_WORKER_BROKEN
    except Exception:
        # The interrupt, turned into another error by the code it landed in: Optuna's tell, cut
        # short, raises UnboundLocalError from its own `finally` (Optuna 5.1).
        if not Interrupt.signal_name:
            raise
        return _interrupted(Interrupt.signal_name, study, storage, admission, last, echo)
    finally:
        admission.release()
    return 0


def _admitted(objective: Objective, admission: Admission, storage: optuna.storages.RDBStorage,
              last: LastTrial) -> Objective:
    """`objective` as a worker runs it: the trial now counts, so the next worker may decide; and
    an interrupt, wherever it lands, is recorded as the trial's fail_reason "interrupted" (on fresh
    storage connections: one it interrupted mid-read could not write)."""
    def trial_in_worker(trial: optuna.Trial) -> float:
        last.trial, last.outcome = trial, None
        try:
            admission.release()
            check_interrupted()
            value = objective(trial)
        except optuna.TrialPruned:
            last.outcome = (TrialState.PRUNED, None)
            raise
        except (TrialFailed, WorkerBroken):       # their reasons are recorded
            last.outcome = (TrialState.FAIL, None)
            raise
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt) and not Interrupt.signal_name:
                # a bug or an unexpected library error: say which
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:500])
                raise
            # Interrupted, wherever it landed: also when code it landed in wrapped it in an error
            # of its own (class creation turns it into "RuntimeError: Error calling __set_name__").
            drop_idle_connections(storage)
            trial.set_user_attr("fail_reason", "interrupted")
            last.outcome = (TrialState.FAIL, None)
            Interrupt.trial = trial.number
            raise KeyboardInterrupt(Interrupt.signal_name or str(e)) from None
        last.outcome = (TrialState.COMPLETE, value)
        return value
    return trial_in_worker


def _interrupted(name: str, study: optuna.Study | None, storage: optuna.storages.RDBStorage | None,
                 admission: Admission, last: LastTrial, echo: Echo) -> int:
    """Say that the worker was interrupted, and what became of its trial; the exit code."""
    stopped = _record_left_running(study, storage, admission, last, echo) if study is not None else ""
    echo(f"interrupted ({name}){stopped}")
    return 143 if name == "SIGTERM" else 130


def _record_left_running(study: optuna.Study, storage: optuna.storages.RDBStorage, admission: Admission,
                         last: LastTrial, echo: Echo) -> str:
    """Record the trial that the interrupt would otherwise leave RUNNING, and say what became of
    this worker's trial ('' if it had none). An interrupt inside the objective is recorded there,
    and Optuna tells it; one outside leaves the telling to this: a trial that Optuna asked for
    but whose objective never started fails as interrupted (a resume runs its config again), and
    one whose objective had ended is told that outcome. A storage error here is said, and leaves
    the trial to its heartbeat."""
    try:
        drop_idle_connections(storage)            # the interrupt may have cut a read short
        for trial in admission.asked_since(study):
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", "interrupted")
            study.tell(trial.number, state=TrialState.FAIL)
            return f"; trial {trial.number} is recorded as failed"
        if last.trial is None:
            return ""
        recorded_by_objective = Interrupt.trial == last.trial.number
        if last.outcome is not None and last.trial.number in _running(study):   # Optuna's tell was cut short
            state, value = last.outcome
            study.tell(last.trial, value, state=state)
            if not recorded_by_objective:
                return f"; trial {last.trial.number} had ended and is recorded as {state.name.lower()}"
        return f"; trial {last.trial.number} is recorded as failed" if recorded_by_objective else ""
    except Exception as e:                        # no worse than before: its heartbeat expires
        echo(f"could not record the running trial ({type(e).__name__}: {e}); it is failed and retried "
             "once its heartbeat expires")
        return ""


@contextlib.contextmanager
def _cpu_threads(threads: int | None):
    """This worker's share of the CPU threads while it runs. Put back afterwards, since the
    one-CPU-worker search runs in the caller's process (its later work, or the next test, must
    not inherit it)."""
    import torch
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _not_an_expected_failure(record: logging.LogRecord) -> bool:
    # Optuna logs each trial exception with its traceback. A TrialFailed is expected: its reason
    # is recorded as fail_reason and printed on the trial's line already. So is an interrupt:
    # the worker says so in one line.
    if record.exc_info and isinstance(record.exc_info[1], (TrialFailed, KeyboardInterrupt)):
        return False
    return not record.getMessage().endswith("failed with value None.")     # the same failure's second line


@contextlib.contextmanager
def optuna_quieted():
    """Optuna as a search wants it while it runs, put back afterwards: warnings and above only, no
    traceback for a trial failure that is expected and said in one line, and no ExperimentalWarning
    (heartbeats, their retry callback and metric names are stable in practice but still flagged
    experimental; the warning would repeat in every worker)."""
    verbosity = optuna.logging.get_verbosity()
    optimize_log = logging.getLogger("optuna.study._optimize")
    ours = _not_an_expected_failure not in optimize_log.filters     # not already, by a caller in this process
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ours:
        optimize_log.addFilter(_not_an_expected_failure)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        if ours:
            optimize_log.removeFilter(_not_an_expected_failure)
        optuna.logging.set_verbosity(verbosity)


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, as a container or taskset limits it),
    not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def share_cores_politely() -> None:
    """For CPU processes that share the cores (workers, bench --parallel): OpenMP threads that
    spin while they wait slow every other process down many times over; passive ones sleep.
    Takes effect in a process that has not started torch's thread pool yet (a spawned one)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _worker_process(ctx: WorkerContext) -> None:
    if ctx.device == "cpu":
        share_cores_politely()
    sys.exit(run_worker(ctx))


# ---------------------------------------------------------------------- rounds of workers
def run_rounds(study: optuna.Study, contexts: list[WorkerContext], trials: int, echo: Echo = say,
               command: str = "search") -> int:
    """Run the workers; if they stop short (a worker died, a trial failed), fail stale
    trials once their heartbeat grace has passed and run another round. Returns the exit code.
    `command` starts the lines it says (search, confirm, replay)."""
    while finished_count(study) < trials:
        before = finished_count(study)
        codes = _run_workers(contexts)
        if any(c in (130, 143) for c in codes):
            code = 143 if 143 in codes else 130
            echo(f"{command}: interrupted ({'SIGTERM' if code == 143 else 'SIGINT'}); the same command resumes "
                 "the study")
            return code
        if finished_count(study) >= trials:
            break
        counts = tally(study)
        if contexts[0].enqueued_only and not counts[TrialState.WAITING] + counts[TrialState.RUNNING]:
            break                                # the runs left failed for good: none to take
        if EXIT_INPUTS_CHANGED in codes:        # the worker said why; another round would say it again
            return EXIT_INPUTS_CHANGED
        if _past(contexts[0].deadline):
            echo(f"{command}: --timeout reached with {finished_count(study)} of {trials} trials finished; "
                 "the same command resumes the study")
            break
        running = tally(study)[TrialState.RUNNING]
        if running:
            echo(f"{command}: waiting for {running} running trial(s) (another machine, or a dead worker whose "
                 "heartbeat has not yet expired)")
            if not _wait_for_running(study, contexts[0].storage):
                continue
        elif finished_count(study) == before:
            echo(f"{command}: no trial finished in the last round (exit codes {codes}); giving up")
            return 1
    return 0


def _wait_for_running(study: optuna.Study, settings: StorageSettings) -> bool:
    """Wait until no trial is RUNNING, failing (and so retrying) those whose worker died.
    A worker killed between creating a trial and its first heartbeat leaves a trial that
    Optuna never considers stale; one heartbeat recorded here gives it a clock."""
    storage = study._storage
    admission = study_lock(settings.url, "admission", study.study_name)
    _fail_stale_admitted(study, admission)            # those whose heartbeat expired already: now
    # Only those that never beat: refreshing a dead worker's old heartbeat would restart its grace,
    # and workers that restart often (a crash loop, a chaos soak) would keep it RUNNING for ever.
    for trial in _never_beat(storage, study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        storage.record_heartbeat(trial._trial_id)     # Optuna exposes trial ids only privately
    deadline = time.time() + settings.heartbeat_grace * 3
    while time.time() < deadline:
        _fail_stale_admitted(study, admission)
        if tally(study)[TrialState.RUNNING] == 0:
            return True
        time.sleep(min(5.0, settings.heartbeat_interval))
    return False


def _fail_stale_admitted(study: optuna.Study, admission) -> None:
    """fail_stale_trials under the admission lock, as a worker's admission calls it. Failing a
    lost trial and enqueueing its retry are two writes: an admission check between them would
    count neither, admit a fresh trial into the lost one's slot, and leave the retry WAITING when
    the study is full (found by the chaos soak on PostgreSQL). `admission`: the study_lock."""
    with admission:
        optuna.storages.fail_stale_trials(study)


def _never_beat(storage: optuna.storages.BaseStorage, trials: list) -> list:
    """The trials with no heartbeat recorded. Optuna has no reader for heartbeats: its table
    (trial_heartbeats, one row per trial that beat) is read directly."""
    import sqlalchemy
    if not trials:
        return []
    storage = getattr(storage, "_backend", storage)   # a study wraps its RDBStorage in a cache
    query = sqlalchemy.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(
        sqlalchemy.bindparam("ids", expanding=True))
    with storage.engine.connect() as conn:
        beat = set(conn.execute(query, {"ids": [t._trial_id for t in trials]}).scalars())
    return [t for t in trials if t._trial_id not in beat]


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
