"""Real worker processes through the installed `mainrun-search` (no mocks): several workers on
one study (SQLite and PostgreSQL), a worker killed with SIGKILL mid-trial (heartbeat, FAIL, a
retry that looks for its checkpoint), Ctrl-C / SIGTERM (exit 130 / 143, the running trial recorded
as FAIL, resume), and machines that share no file lock ending at exactly --trials on PostgreSQL.
A few tests run a worker in this process instead, to land its Ctrl-C where a real one rarely lands:
inside a storage read or Optuna's tell (through SQLAlchemy's own hooks), or inside Optuna's ask (a
sampler's before_trial).

Which trial a worker is training is read from the worker's open file descriptors: train()
keeps the trial's JSONL log (`trial-<number>.jsonl`) open while it trains, so a signal sent
right after seeing it lands inside the trial, not between two trials.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from helpers import SPACES, TINY, cli, interrupted_inside_the_next_read
from mainrun.soak import trial_in_training as training

SMOKE = SPACES / "smoke.yaml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STUDY = "w"
START_TIMEOUT = 180          # seconds until a worker is inside a trial
RUN_TIMEOUT = 300            # seconds for a whole search
EXIT_AFTER_SIGNAL = 10       # seconds a search may take to stop after Ctrl-C / SIGTERM


# ---------------------------------------------------------------------- fixtures
@pytest.fixture
def titles(titles_file) -> Path:
    return titles_file


@pytest.fixture
def quick_space(tmp_path) -> Path:
    """The smoke space with four times fewer, larger batches and no pruner, for the tests that
    interrupt a search: every trial trains to its end (a fraction of a second to a few seconds),
    so 20 of them stay cheap, and no trial is pruned in the instant a signal is sent."""
    spec = yaml.safe_load(SMOKE.read_text())
    spec["fixed"]["batch_size"] = 32
    spec["pruner"] = {"name": "none"}
    path = tmp_path / "smoke-quick.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def searches(tmp_path):
    """Start `mainrun-search` processes; whatever is still running at teardown is killed,
    with its workers (each search is its own process group)."""
    started: list[Search] = []

    def start(*args, **kw) -> Search:
        s = Search(tmp_path, len(started), *args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("pg_url")


# ---------------------------------------------------------------------- helpers
class Search:
    """One `mainrun-search` process, its output in a file (no pipe to fill up)."""

    def __init__(self, tmp_path: Path, index: int, storage: str, titles: Path, trials: int,
                 jobs: int = 1, space: Path = SMOKE, extra: tuple[str, ...] = (), sigint_ignored: bool = False):
        self.storage = storage
        self.sigint_ignored = sigint_ignored          # as for `mainrun-search ... &` started from a script
        self.argv = cli("mainrun-search", "--space", str(space), "--trials", str(trials), "--jobs", str(jobs),
                        "--dataset", str(titles), "--storage", storage, "--study", STUDY, "--device", "cpu",
                        "--artifacts", str(tmp_path / "artifacts"), *extra)
        self.tmp = tmp_path / "tmp"                   # trial work folders and the admission lock
        self.tmp.mkdir(exist_ok=True)
        self.log = tmp_path / f"search-{index}.log"
        self.cwd = tmp_path
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        # OpenMP threads that sleep instead of spinning: a single worker uses every core, and
        # spinning threads slow it down many times over when anything else wants a core.
        env = {**os.environ, "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1",
               "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=self._inherited_sigint)

    def _inherited_sigint(self) -> None:
        # in the child before exec: the disposition the search starts with, whatever pytest's is
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.sigint_ignored else signal.SIG_DFL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"mainrun-search did not finish within {timeout:.0f}s; output:\n{self.output()[-6000:]}")

    def kill(self) -> None:
        """SIGKILL the search and its workers (its process group), if anything is left."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"mainrun-search exited early ({self.proc.returncode}); output:\n{self.output()[-6000:]}")


def open_storage(url: str):
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def trials_of(url: str) -> list:
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def states(trials) -> dict[TrialState, int]:
    counts = {s: 0 for s in TrialState}
    for t in trials:
        counts[t.state] += 1
    return counts


def describe(trials) -> str:
    return "\n".join(f"  #{t.number} {t.state.name} {t.params} user={t.user_attrs.get('fail_reason', '')!r} "
                     f"system={t.system_attrs}" for t in trials)


def _processes(field: int, value: int) -> list[int]:
    """Live processes whose /proc/<pid>/stat field (0 state, 1 ppid, 2 pgrp) is `value`
    (no psutil, and procps may be missing on a bare machine)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[field]) == value:
            found.append(int(stat.parent.name))
    return sorted(found)


def children(pid: int) -> list[int]:
    return _processes(1, pid)


def process_group(pgid: int) -> list[int]:
    return _processes(2, pgid)


def is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()   # not the resource tracker
    except OSError:
        return False


def wait_until_training(search: Search, min_trial: int = 0, workers: bool = False) -> tuple[int, int]:
    """Wait until a process of `search` (the search itself, or one of its worker processes)
    trains a trial numbered >= min_trial that the storage shows RUNNING. Returns (pid, trial).
    The caller signals at once: the trial still has most of its training ahead."""
    deadline = time.time() + START_TIMEOUT
    storage = study = None
    try:
        while time.time() < deadline:
            search.check_alive()
            if study is None:
                if "search: watch it live" in search.output():     # the CLI made the study
                    storage = open_storage(search.storage)
                    study = optuna.load_study(study_name=STUDY, storage=storage)
            else:
                running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                pids = [p for p in children(search.pid) if is_worker(p)] if workers else [search.pid]
                for pid in pids:
                    number = training(pid)
                    if number is not None and number >= min_trial and number in running:
                        return pid, number
            time.sleep(0.05)
    finally:
        if storage is not None:
            storage.engine.dispose()
    search.kill()
    pytest.fail(f"no trial >= {min_trial} was being trained within {START_TIMEOUT}s; output:\n"
                f"{search.output()[-6000:]}")


def assert_clean_output(out: str) -> None:
    assert "database is locked" not in out.lower(), out[-6000:]
    assert "Traceback" not in out, out[-6000:]


# ---------------------------------------------------------------------- several workers
def test_three_workers_share_one_study(storage_url, titles, searches):
    url = storage_url
    search = searches(url, titles, trials=6, jobs=3)
    rc = search.wait(RUN_TIMEOUT)
    out = search.output()
    assert rc == 0, out[-6000:]
    assert_clean_output(out)

    trials = trials_of(url)
    counts = states(trials)
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 6, describe(trials)
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0, describe(trials)
    assert counts[TrialState.FAIL] == 0, describe(trials)
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers) == 6, describe(trials)
    # the enqueued trial ran once; no two workers sampled (or took) the same point
    enqueued = [t for t in trials if "enqueued_as" in t.user_attrs]
    assert len(enqueued) == 1, describe(trials)
    sampled = [tuple(sorted(t.params.items())) for t in trials if "enqueued_as" not in t.user_attrs]
    assert len(set(sampled)) == len(sampled), describe(trials)
    # the workers really shared the study (a worker that starts last on a loaded machine may find
    # the six trials taken, so at least two, not necessarily all three)
    assert len({m for m in re.findall(r"^\[w(\d)\] trial", out, re.M)}) >= 2, out[-6000:]


def test_four_sqlite_workers_while_the_dashboard_reads(tmp_path, titles, searches):
    """The README's SQLite promise: WAL + a lock timeout, so 4 writers and a reading
    optuna-dashboard never see "database is locked"."""
    import json
    import socket
    import urllib.request

    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    search = searches(url, titles, trials=8, jobs=4)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deadline = time.time() + START_TIMEOUT
    while not db.exists():                          # the search creates it (in WAL mode)
        assert time.time() < deadline, search.output()[-6000:]
        time.sleep(0.2)
    dash = subprocess.Popen(cli("optuna-dashboard", url, "--host", "127.0.0.1", "--port", str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reads = 0
    try:
        while search.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as r:
                    for summary in json.loads(r.read())["study_summaries"]:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}",
                                                    timeout=10) as detail:
                            assert detail.status == 200
                    reads += 1
            except OSError:                         # the dashboard is still starting
                assert dash.poll() is None, dash.stderr.read().decode()[-3000:]
            time.sleep(0.2)
    finally:
        dash.terminate()
        errors = dash.communicate(timeout=30)[1].decode()
    rc = search.wait(RUN_TIMEOUT)
    out = search.output()
    assert rc == 0, out[-6000:]
    assert_clean_output(out)
    assert "database is locked" not in errors.lower(), errors[-3000:]
    assert reads >= 3, "the dashboard was not read while the workers wrote"
    counts = states(trials_of(url))
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 8
    assert counts[TrialState.FAIL] == counts[TrialState.RUNNING] == 0


# ---------------------------------------------------------------------- a worker dies
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")     # retried_trial_number
def test_killed_worker_trial_is_failed_and_retried(storage_url, titles, quick_space, searches):
    trials_wanted = 8
    search = searches(storage_url, titles, trials=trials_wanted, jobs=2, space=quick_space,
                      extra=("--heartbeat", "1", "--heartbeat-grace", "8"))   # a loaded live worker is never stale
    victim, killed = wait_until_training(search, workers=True)
    os.kill(victim, signal.SIGKILL)

    rc = search.wait(RUN_TIMEOUT)
    out = search.output()
    assert rc == 0, out[-6000:]
    assert "database is locked" not in out.lower(), out[-6000:]

    trials = trials_of(storage_url)
    counts = states(trials)
    by_number = {t.number: t for t in trials}
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == trials_wanted, describe(trials)
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0, describe(trials)
    assert by_number[killed].state == TrialState.FAIL, describe(trials)
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [killed], describe(trials)
    retries = [t for t in trials
               if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert len(retries) == 1, describe(trials)
    retry = retries[0]
    assert retry.state in FINISHED, describe(trials)
    assert retry.params == by_number[killed].params, describe(trials)
    # it looked for its predecessor's checkpoint (resumed from it, or from step 0 if it had none yet)
    assert 0 <= retry.user_attrs["resumed_from_step"] < retry.user_attrs["max_steps"], describe(trials)
    assert not list((search.cwd / "checkpoints").rglob("*.pt"))          # all ended: none is left


# ---------------------------------------------------------------------- Ctrl-C / SIGTERM
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_records_failed_trial_and_resume_finishes(sig, code, tmp_path, titles, quick_space, searches):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    trials_wanted = 20
    search = searches(url, titles, trials=trials_wanted, space=quick_space)
    _, interrupted = wait_until_training(search, min_trial=1)     # one trial already done: a real resume
    sent = time.monotonic()
    os.kill(search.pid, sig)
    try:
        rc = search.proc.wait(timeout=3 * EXIT_AFTER_SIGNAL)
    except subprocess.TimeoutExpired:
        search.kill()
        pytest.fail(f"mainrun-search ignored {sig.name} for {3 * EXIT_AFTER_SIGNAL}s:\n{search.output()[-6000:]}")
    took = time.monotonic() - sent
    out = search.output()
    assert rc == code, out[-6000:]
    assert took < EXIT_AFTER_SIGNAL, f"{took:.1f}s to stop after {sig.name}"
    assert "interrupted" in out

    trials = trials_of(url)
    by_number = {t.number: t for t in trials}
    assert states(trials)[TrialState.RUNNING] == 0, describe(trials)
    assert by_number[interrupted].state == TrialState.FAIL, describe(trials)
    assert by_number[interrupted].user_attrs.get("fail_reason") == "interrupted", describe(trials)
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [interrupted], describe(trials)
    finished_before = sum(t.state in FINISHED for t in trials)
    assert 1 <= finished_before < trials_wanted

    again = searches(url, titles, trials=trials_wanted, space=quick_space)                  # the same command resumes
    rc = again.wait(RUN_TIMEOUT)
    out = again.output()
    assert rc == 0, out[-6000:]
    assert f"resuming study '{STUDY}'" in out, out[-6000:]
    assert_clean_output(out)
    trials = trials_of(url)
    counts = states(trials)
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == trials_wanted, describe(trials)
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0, describe(trials)
    assert counts[TrialState.FAIL] == 1, describe(trials)


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["from-a-terminal", "started-with-&"])
def test_ctrl_c_to_parent_of_two_workers(tmp_path, titles, quick_space, searches, sigint_ignored):
    """A background job started from a script inherits SIGINT ignored; `kill -INT` must still
    stop the search, as it stops the workers."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search = searches(url, titles, trials=12, jobs=2, space=quick_space, sigint_ignored=sigint_ignored)
    _, interrupted = wait_until_training(search, workers=True)
    sent = time.monotonic()
    os.kill(search.pid, signal.SIGINT)
    rc = search.wait(3 * EXIT_AFTER_SIGNAL)
    took = time.monotonic() - sent
    out = search.output()
    assert rc == 130, out[-6000:]
    assert "search: interrupted (SIGINT); the same command resumes the study" in out, out[-6000:]
    assert took < EXIT_AFTER_SIGNAL, f"{took:.1f}s to stop after SIGINT"
    assert "database is locked" not in out.lower(), out[-6000:]

    trials = trials_of(url)
    by_number = {t.number: t for t in trials}
    assert states(trials)[TrialState.RUNNING] == 0, describe(trials)
    assert by_number[interrupted].state == TrialState.FAIL, describe(trials)
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("fail_reason") == "interrupted", describe(trials)
    # no worker outlives the search (it runs in its own process group)
    deadline = time.time() + 10
    while process_group(search.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not process_group(search.pid), [Path(f"/proc/{p}/cmdline").read_bytes() for p in process_group(search.pid)]


def ctrl_c_inside_a_read(url: str, read: Callable[[], object], number: int) -> None:
    """`read()` (a storage read), with a real SIGINT landing inside it just after another worker
    wrote to the study at `url`."""
    def another_worker_writes():
        optuna.load_study(study_name=STUDY, storage=url).set_user_attr("other_worker", number)
    with interrupted_inside_the_next_read(lambda: os.kill(os.getpid(), signal.SIGINT), another_worker_writes):
        read()
    pytest.fail("the SIGINT did not interrupt the read")


@dataclass
class InterruptedInsideARead:
    """An objective whose Ctrl-C lands inside a storage read (the pruner's, at an evaluation)."""
    url: str

    def build(self, study: optuna.Study, ctx) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            trial.report(1.0, step=0)
            ctrl_c_inside_a_read(self.url, trial.should_prune, trial.number)
        return objective


def test_a_ctrl_c_inside_a_storage_read_is_recorded_like_any_other(tmp_path, capsys):
    """SQLite: the interrupted read leaves its connection holding a snapshot from before the other
    worker's write (Python's sqlite3 keeps a half-read statement open across the pool's rollback),
    and that connection's next write failed 'database is locked' at once, whatever the busy timeout:
    the search crashed instead of recording the trial as failed and exiting 130."""
    from mainrun.search.workers import run_worker
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name=STUDY, storage=open_storage(url))
    assert run_worker(in_process_worker(tmp_path, url, InterruptedInsideARead(url), trials=1)) == 130
    [trial] = optuna.load_study(study_name=STUDY, storage=url).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert "interrupted (SIGINT); trial 0 is recorded as failed" in capsys.readouterr().out


def test_the_ctrl_c_lands_in_the_reading_thread_though_a_heartbeat_writes_first(tmp_path):
    """The test above failed once in CI: the heartbeat thread's write was the first statement after
    the hook was set, so the Ctrl-C landed there and the read ran to its end."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name=STUDY, storage=url)
    landed_in = []

    def ctrl_c():
        landed_in.append(threading.current_thread().name)
        raise KeyboardInterrupt

    def heartbeat():
        optuna.load_study(study_name=STUDY, storage=url).set_user_attr("heartbeat", 1)

    with pytest.raises(KeyboardInterrupt):
        with interrupted_inside_the_next_read(ctrl_c, lambda: None):
            beat = threading.Thread(target=heartbeat, name="heartbeat")
            beat.start()
            beat.join()
            study.get_trials(deepcopy=False)
    assert landed_in == ["MainThread"]
    assert optuna.load_study(study_name=STUDY, storage=url).user_attrs == {"heartbeat": 1}


class InterruptedInsideThePrunersRead(optuna.pruners.BasePruner):
    """A pruner whose Ctrl-C lands inside its read of the study, as another worker writes."""

    def __init__(self, url: str):
        self.url = url

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        ctrl_c_inside_a_read(self.url, lambda: study.get_trials(deepcopy=False), trial.number)


@dataclass
class TrainingInterruptedInsideARead:
    """A real training trial (mainrun's TrialRunner, the tiny config), interrupted inside the
    pruner's read at its first evaluation."""
    url: str
    config: dict

    def build(self, study: optuna.Study, ctx) -> Callable[[optuna.Trial], float]:
        from mainrun.config import RunConfig
        from mainrun.data import prepare_data
        from mainrun.search.objective import TrialRunner
        cfg = RunConfig.from_dict(self.config)
        runner = TrialRunner(prepare_data(cfg, log=lambda _m: None), ctx)
        study.pruner = InterruptedInsideThePrunersRead(self.url)
        return lambda trial: runner(trial, cfg)


def test_a_training_trial_interrupted_inside_a_storage_read_keeps_its_artifacts(tmp_path, titles_file, capsys):
    """An interrupted trial keeps its config and partial log as artifacts, as any other does. Their
    upload, after a Ctrl-C inside a read, took a pooled connection that the read had left unable to
    write ('database is locked' at once), and the artifacts were lost."""
    from mainrun.search.workers import run_worker
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name=STUDY, storage=open_storage(url))
    objective = TrainingInterruptedInsideARead(url, {**TINY, "dataset": str(titles_file)})
    assert run_worker(in_process_worker(tmp_path, url, objective, trials=1)) == 130
    [trial] = trials_of(url)
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert "artifact_error" not in trial.user_attrs, trial.user_attrs
    storage = open_storage(url)
    kept = {meta.filename for meta in optuna.artifacts.get_all_artifact_meta(trial, storage=storage)}
    storage.engine.dispose()
    assert kept == {"trial-0-config.yaml", "trial-0.jsonl"}, kept
    assert "not saved as artifacts" not in capsys.readouterr().out


def test_an_interrupt_that_python_drops_is_acted_on_later_and_not_printed(monkeypatch):
    """A signal whose KeyboardInterrupt is raised inside a finalizer (or a gc callback) cannot
    propagate: Python printed it as an "Exception ignored" traceback on the user's Ctrl-C. The
    worker acts on it at its next check instead; an unrelated unraisable error still reaches the
    hook that was there before (Python's printer; here a recorder)."""
    import sys

    from mainrun.search.interrupts import check_interrupted, interrupts_caught

    class SignalledWhileFinalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):           # the handler runs here, inside the finalizer
                pass

    class FailsWhileFinalized:
        def __del__(self):
            raise ValueError("a finalizer's own error")

    reached = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reached.append(unraisable.exc_value))
    with interrupts_caught():
        SignalledWhileFinalized()
        FailsWhileFinalized()
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            check_interrupted()
    assert [type(e) for e in reached] == [ValueError], reached
    FailsWhileFinalized()                     # after the worker: the hook before it, put back
    assert [type(e) for e in reached] == [ValueError, ValueError], reached


def in_process_worker(tmp_path, url: str, objective, trials: int):
    """A worker context for run_worker in this process, on the study STUDY at `url`."""
    from mainrun.search.workers import WorkerContext
    from mainrun.storage import StorageSettings
    return WorkerContext(objective=objective, storage=StorageSettings(url), study_name=STUDY, trials=trials,
                         device="cpu", artifacts=str(tmp_path), worker=0, start_time=time.time(), finished_at_start=0)


class SignalWhenAsked(optuna.samplers.RandomSampler):
    """A real sampler whose Ctrl-C lands inside Optuna's ask for trial `number`: the trial exists
    (RUNNING) and the objective has not started."""

    def __init__(self, number: int):
        super().__init__(seed=0)
        self.number = number

    def before_trial(self, study, trial) -> None:
        if trial.number == self.number:
            os.kill(os.getpid(), signal.SIGINT)


@dataclass
class InterruptedWhileAsked:
    number: int

    def build(self, study: optuna.Study, ctx) -> Callable[[optuna.Trial], float]:
        study.sampler = SignalWhenAsked(self.number)
        return lambda trial: trial.suggest_float("x", 0, 1)


def test_a_ctrl_c_inside_optunas_ask_fails_the_new_trial_as_interrupted(tmp_path, capsys, storage_url):
    """A Ctrl-C after Optuna created the trial and before the objective began left it RUNNING: a
    resume waited out its heartbeat grace for it, and its config (an enqueued one, say) was not
    run again. Another worker's running trial is left alone."""
    from mainrun.search.workers import run_worker
    url = storage_url
    study = optuna.create_study(study_name=STUDY, storage=open_storage(url))
    others = study.ask()                                    # another worker's, running
    assert run_worker(in_process_worker(tmp_path, url, InterruptedWhileAsked(number=2), trials=4)) == 130
    by_number = {t.number: t for t in trials_of(url)}
    assert by_number[others.number].state == TrialState.RUNNING, describe(by_number.values())
    assert by_number[1].state == TrialState.COMPLETE, describe(by_number.values())
    assert by_number[2].state == TrialState.FAIL, describe(by_number.values())
    assert by_number[2].user_attrs["fail_reason"] == "interrupted"
    assert "interrupted (SIGINT); trial 2 is recorded as failed" in capsys.readouterr().out


@dataclass
class InterruptedAsItsHeartbeatStarts:
    """A Ctrl-C right after Optuna started the trial's heartbeat thread, inside the entry of the
    `with` that would stop it (a profile hook sends it as HeartbeatThread.start returns)."""

    def build(self, study: optuna.Study, ctx) -> Callable[[optuna.Trial], float]:
        import sys

        from optuna.storages._heartbeat import HeartbeatThread

        def land_here(frame, event, _arg):
            if event == "return" and frame.f_code is HeartbeatThread.start.__code__:
                sys.setprofile(None)
                os.kill(os.getpid(), signal.SIGINT)
        sys.setprofile(land_here)
        return lambda trial: pytest.fail("the SIGINT did not land as the heartbeat started")


def heartbeat_threads() -> list:
    return [t for t in threading.enumerate() if t.name.endswith("(_record_heartbeat)")]


def test_a_ctrl_c_as_a_trials_heartbeat_starts_stops_that_heartbeat(tmp_path, capsys):
    """The interrupt skipped the `with`'s exit, so nothing stopped the thread: it beat on for a
    trial already recorded, and the worker's process never exited (it waits for the thread)."""
    import sys

    from mainrun.search.workers import _stop_heartbeats_left_beating, run_worker
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name=STUDY, storage=open_storage(url))
    try:
        assert run_worker(in_process_worker(tmp_path, url, InterruptedAsItsHeartbeatStarts(), trials=1)) == 130
        assert heartbeat_threads() == []
    finally:
        sys.setprofile(None)
        _stop_heartbeats_left_beating()       # a failed run must not hang the test session at exit
    [trial] = trials_of(url)
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert "interrupted (SIGINT); trial 0 is recorded as failed" in capsys.readouterr().out


@dataclass
class InterruptedWhileTold:
    """An objective that ends (returns, or is pruned) with its Ctrl-C set to land in Optuna's
    tell: at the next statement the worker's thread sends to the database."""
    pruned: bool

    def build(self, study: optuna.Study, ctx) -> Callable[[optuna.Trial], float]:
        import threading

        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        def land_here(*_):
            if threading.current_thread() is threading.main_thread():    # not the heartbeat's
                event.remove(Engine, "before_execute", land_here)
                os.kill(os.getpid(), signal.SIGINT)

        def objective(trial: optuna.Trial) -> float:
            trial.report(0.9, step=0)
            event.listen(Engine, "before_execute", land_here)
            if self.pruned:
                raise optuna.TrialPruned("pruned at evaluation 0")
            return 0.75
        self.land_here = land_here
        return objective


@pytest.mark.parametrize("pruned", [False, True], ids=["complete", "pruned"])
def test_a_ctrl_c_inside_optunas_tell_keeps_the_ended_trials_outcome(tmp_path, capsys, storage_url, pruned):
    """A Ctrl-C after the objective ended and before Optuna recorded how crashed the worker: Optuna
    5.1's tell, cut short, raises UnboundLocalError from its own `finally`. The trial stayed
    RUNNING, its finished run lost, and a resume waited out its heartbeat grace for it."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from mainrun.search.workers import run_worker
    url = storage_url
    optuna.create_study(study_name=STUDY, storage=open_storage(url))
    objective = InterruptedWhileTold(pruned)
    try:
        assert run_worker(in_process_worker(tmp_path, url, objective, trials=2)) == 130
    finally:
        if event.contains(Engine, "before_execute", objective.land_here):
            event.remove(Engine, "before_execute", objective.land_here)
    [trial] = trials_of(url)
    state = "pruned" if pruned else "complete"
    assert trial.state == TrialState[state.upper()], describe([trial])
    assert trial.value == (0.9 if pruned else 0.75)
    assert f"interrupted (SIGINT); trial 0 had ended and is recorded as {state}" in capsys.readouterr().out


def test_a_trial_that_never_sent_a_heartbeat_does_not_block_the_study(tmp_path, titles, quick_space, searches):
    """A worker killed between creating its trial and its first heartbeat leaves a RUNNING trial
    that Optuna never finds stale on its own. The next search must still fail it and finish."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = searches(url, titles, trials=1, space=quick_space)
    assert first.wait(RUN_TIMEOUT) == 0, first.output()[-6000:]
    zombie = optuna.load_study(study_name=STUDY, storage=url).ask()     # RUNNING, no heartbeat ever
    search = searches(url, titles, trials=3, space=quick_space, extra=("--heartbeat", "1", "--heartbeat-grace", "2"))
    rc = search.wait(RUN_TIMEOUT)
    assert rc == 0, search.output()[-6000:]
    trials = trials_of(url)
    counts = states(trials)
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 3, describe(trials)
    assert counts[TrialState.RUNNING] == 0, describe(trials)
    assert next(t for t in trials if t.number == zombie.number).state == TrialState.FAIL


def test_sigterm_while_waiting_for_a_dead_workers_trial_exits_143(tmp_path, titles, quick_space, searches):
    """Between rounds the search waits (up to three heartbeat graces) for a trial whose worker
    may have died. SIGTERM there stops it like Ctrl-C: a message and exit 143, not a silent kill."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = searches(url, titles, trials=1, space=quick_space)
    assert first.wait(RUN_TIMEOUT) == 0, first.output()[-6000:]
    zombie = optuna.load_study(study_name=STUDY, storage=url).ask()     # RUNNING: it fills the last slot
    search = searches(url, titles, trials=2, space=quick_space, extra=("--heartbeat", "5", "--heartbeat-grace", "60"))
    deadline = time.time() + START_TIMEOUT
    while "waiting for 1 running trial" not in search.output():
        search.check_alive()
        assert time.time() < deadline, search.output()[-6000:]
        time.sleep(0.1)
    os.kill(search.pid, signal.SIGTERM)
    rc = search.wait(3 * EXIT_AFTER_SIGNAL)
    out = search.output()
    assert rc == 143, out[-6000:]
    assert "interrupted (SIGTERM)" in out and "Traceback" not in out, out[-6000:]
    assert next(t for t in trials_of(url) if t.number == zombie.number).state == TrialState.RUNNING


# ---------------------------------------------------------------------- exact --trials across machines
# One "machine": the worker loop's admission (check under the lock, the new trial made, the lock
# released), as fast as it can go, so that machines race for every slot.
MACHINE = """
import sys, warnings, optuna
warnings.simplefilter("ignore")
from mainrun.search.workers import Admission
from mainrun.storage import StorageSettings, open_storage
url, trials = sys.argv[1], int(sys.argv[2])
study = optuna.load_study(study_name="x", storage=open_storage(StorageSettings(url)))
admission = Admission(url, "x", trials)
while admission.needed(study):
    trial = study.ask()          # as study.optimize does: the trial exists, then the objective releases
    admission.release()
    study.tell(trial, 0.0)
"""


def test_machines_that_share_no_file_lock_end_at_exactly_trials_on_postgresql(pg_url, tmp_path):
    """Six processes, each with its own temp folder (so machine_lock files differ, as on separate
    machines), admit trials on one PostgreSQL study: the database's advisory lock keeps the count."""
    import sys
    trials = 40
    optuna.create_study(study_name="x", storage=pg_url)
    machines = [tmp_path / f"machine-{i}" for i in range(6)]
    procs = []
    for machine in machines:
        machine.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", MACHINE, pg_url, str(trials)],
                                      env={**os.environ, "TMPDIR": str(machine)}, stderr=subprocess.PIPE))
    for p in procs:
        assert p.wait(timeout=RUN_TIMEOUT) == 0, p.stderr.read().decode()[-3000:]
    made = optuna.load_study(study_name="x", storage=pg_url).get_trials(deepcopy=False)
    assert len(made) == trials and all(t.state == TrialState.COMPLETE for t in made), states(made)
    assert not [p for m in machines for p in m.iterdir()]               # no file lock was used, or needed


def test_the_admission_lock_is_the_databases_on_postgresql_and_a_file_on_sqlite(pg_url, tmp_path):
    import sqlalchemy
    from filelock import FileLock

    from mainrun.storage import study_lock
    assert isinstance(study_lock(f"sqlite:///{tmp_path / 'a.db'}", "admission", "s"), FileLock)
    lock = study_lock(pg_url, "admission", "s")
    engine = sqlalchemy.create_engine(pg_url)

    def free() -> bool:            # another session (another machine) tries to take it
        with engine.connect() as conn:
            got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": lock.key}).scalar()
            if got:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": lock.key})
            return got
    try:
        lock.acquire()
        assert lock.is_locked and not free()
        lock.release()
        assert not lock.is_locked and free()
        with lock:                 # as workers use it
            assert not free()
        assert free()
        assert study_lock(pg_url, "admission", "other study").key != lock.key
    finally:
        lock.release()
        engine.dispose()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")         # trials asked for by hand
def test_waiting_for_running_trials_gives_a_clock_only_to_trials_that_never_beat(storage_url):
    """A search that waits for running trials records one heartbeat for a trial that never beat (its
    worker died before the first), but never refreshes a dead worker's old one: workers that restart
    every few seconds (a crash loop, the chaos soak) would otherwise keep its trial RUNNING for ever."""
    from mainrun.search.workers import _never_beat, _wait_for_running
    from mainrun.storage import StorageSettings
    from mainrun.storage import open_storage as open_search_storage
    settings = StorageSettings(storage_url, heartbeat_interval=1, heartbeat_grace=4)
    storage = open_search_storage(settings)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    beat, silent = study.ask(), study.ask()
    storage.record_heartbeat(beat._trial_id)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert [t.number for t in _never_beat(storage, running)] == [silent.number]
    # restarted searches keep waiting, one after another, each for less than the grace (4 s): the
    # dead trials still go stale
    deadline = time.time() + 60
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        assert time.time() < deadline, describe(study.get_trials())
        _wait_for_running(study, StorageSettings(storage_url, heartbeat_interval=1, heartbeat_grace=1))   # 3 s
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert sorted(t.number for t in failed) == [beat.number, silent.number]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")         # a trial asked for by hand
def test_a_lost_trial_is_failed_and_its_retry_enqueued_under_the_admission_lock(storage_url):
    """Failing a lost trial and enqueueing its retry are two writes. A worker's admission check
    between them counts neither and gives the lost trial's slot to a fresh trial, and the retry is
    left WAITING in a full study (the chaos soak on PostgreSQL caught it). A search waiting for
    running trials therefore fails them under the admission lock, as admission itself does."""
    import threading

    from mainrun.search.workers import _wait_for_running
    from mainrun.storage import StorageSettings, study_lock
    from mainrun.storage import open_storage as open_search_storage
    settings = StorageSettings(storage_url, heartbeat_interval=1, heartbeat_grace=1)
    storage = open_search_storage(settings)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    lost = study.ask()
    storage.record_heartbeat(lost._trial_id)
    time.sleep(1.5)                                                    # its heartbeat is stale now

    def states() -> list[TrialState]:
        return [t.state for t in optuna.load_study(study_name=STUDY, storage=storage_url).get_trials()]
    admission = study_lock(storage_url, "admission", STUDY)
    admission.acquire()                                                # a worker deciding on a trial
    waiter = threading.Thread(target=_wait_for_running, args=(study, settings), daemon=True)
    try:
        waiter.start()
        time.sleep(2.0)
        assert states() == [TrialState.RUNNING]                        # not failed behind its back
    finally:
        admission.release()
    waiter.join(timeout=60)
    assert states() == [TrialState.FAIL, TrialState.WAITING]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")         # trials asked for by hand
def test_a_lost_trial_whose_retry_died_with_the_worker_failing_it_is_retried_at_the_next_admission(storage_url):
    """fail_stale_trials writes the FAIL, then enqueues the retry: a worker killed between the two
    left the lost config with no retry (the chaos soak on PostgreSQL, once). The next admission
    enqueues it, once, only while the study still needs trials, and never for a trial that failed
    with a reason of its own (an interrupted one)."""
    from optuna.distributions import FloatDistribution

    from mainrun.search.workers import Admission
    from mainrun.storage import StorageSettings, open_storage
    storage = open_storage(StorageSettings(storage_url))
    study = optuna.create_study(study_name=STUDY, storage=storage)
    lost, interrupted = (study.ask({"x": FloatDistribution(0, 1)}) for _ in range(2))
    storage.set_trial_state_values(lost._trial_id, TrialState.FAIL)      # the first write; the worker died
    interrupted.set_user_attr("fail_reason", "interrupted")
    storage.set_trial_state_values(interrupted._trial_id, TrialState.FAIL)

    full = Admission(storage_url, STUDY, trials=0)
    assert not full.needed(study)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 2    # a full study gets no retry to leave waiting
    admission = Admission(storage_url, STUDY, trials=3)
    for _ in range(2):                                                  # the second finds the retry in place
        assert admission.needed(study)
        admission.release()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].params == lost.params and trials[2].system_attrs["retry_history"] == [lost.number]
