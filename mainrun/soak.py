"""python -m mainrun.bench --soak SECONDS --storage URL --dataset FILE: a chaos soak of crash survival.

Eight workers (mainrun-search processes, one CPU core each) share one study of a tiny space with
short heartbeats. Every 3-8 s one of them is SIGKILLed and a replacement started in its place: half
the time a random one of those inside a trial (on a small machine most of a worker's life can be
its start-up), else a random one of all. On PostgreSQL each worker acts as a machine of its own:
its own cache folder and temp folder, so no file lock is shared and only the database's admission
lock keeps the count; on SQLite they are one machine's workers. The checkpoint folder is shared, as
a mount would be.

After SECONDS the kills stop and the workers finish the study. Then the soak checks, and prints:
exactly --trials finished trials, none left running or waiting; every lost trial was one it killed,
was retried, and resumed from its checkpoint when it had one (at that checkpoint's step); no config
trained beyond its own retries; and each resumed trial's value and curve equal, bit for bit, an
uninterrupted rerun of its config here. Exit 0 when every check holds, 1 when one does not.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SOAK_SPACE = {
    "description": "chaos soak: a tiny model trained in a second or two; not comparable with Mainrun",
    "cpu_ok": True,
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},              # every trial trains to its end: its value can be rerun
    "fixed": {"mainrun_rules": False, "num_titles": 1000, "vocab_size": 300, "block_size": 32, "batch_size": 8,
              "n_layer": 1, "eval_batch_size": 4, "eval_block_size": 32, "epochs": 4, "evals_per_epoch": 4},
    "params": {"optimizer": {"choices": ["sgd", "adamw", "muon"]},
               "lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
               "dropout": {"low": 0.0, "high": 0.2},                  # random draws to restore
               "grad_accum_steps": {"values": [1, 2]},                # a group cut by the kill
               "d_model": {"values": [16, 32]}},
}
TRIAL_LOG = re.compile(r"/trial-(\d+)\.jsonl$")     # see objective.TrialRunner


@dataclass
class Kill:
    at: float                  # seconds into the soak
    pid: int
    trial: int | None          # the trial it was training (its log open), if any
    checkpoint_step: int | None  # that trial's checkpoint step at the kill, if it had one


@dataclass
class Worker:
    slot: int
    proc: subprocess.Popen
    log: Path


@dataclass
class Soak:
    storage: str
    dataset: str
    trials: int
    workers: int = 8
    heartbeat: int = 2
    grace: int = 20
    kill_every: tuple[float, float] = (3.0, 8.0)
    mid_trial: float = 0.5       # the chance that a kill picks among the workers inside a trial
    drain_timeout: float = 900.0
    seed: int = 0
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mainrun-soak-")))

    def __post_init__(self):
        from sqlalchemy.engine import make_url
        self.machines = make_url(self.storage).get_backend_name() == "postgresql"   # else one machine
        self.rng = random.Random(self.seed)
        self.space = self.scratch / "soak.yaml"
        self.space.write_text(yaml.safe_dump(SOAK_SPACE, sort_keys=False))
        self.checkpoints = self.scratch / "checkpoints"
        self.study = f"soak-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"     # a new study every soak
        self.kills: list[Kill] = []
        self.started = 0
        self.crashed: list[str] = []           # workers that exited non-zero without being killed

    # ------------------------------------------------------------------ workers
    def _machine(self, slot: int) -> Path:
        return self.scratch / (f"machine-{slot}" if self.machines else "machine")

    def start(self, slot: int) -> Worker:
        machine = self._machine(slot)
        (machine / "tmp").mkdir(parents=True, exist_ok=True)
        args = ["--space", str(self.space), "--trials", str(self.trials), "--storage", self.storage,
                "--study", self.study, "--dataset", self.dataset, "--device", "cpu", "--jobs", "1",
                "--heartbeat", str(self.heartbeat), "--heartbeat-grace", str(self.grace),
                "--artifacts", str(self.scratch / "artifacts"), "--checkpoint-dir", str(self.checkpoints),
                "--cache-dir", str(machine / "cache")]
        env = {**os.environ, "TMPDIR": str(machine / "tmp"), "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        cores = sorted(os.sched_getaffinity(0))
        core = cores[slot % len(cores)]
        log = self.scratch / f"worker-{slot}-{self.started}.log"
        self.started += 1
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from mainrun.cli import search_main; sys.exit(search_main())",
                 *args], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=lambda: os.sched_setaffinity(0, {core}))   # one core each
        return Worker(slot, proc, log)

    def kill(self, worker: Worker, at: float) -> None:
        trial = trial_in_training(worker.proc.pid)
        try:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.proc.wait()
        step = None
        if trial is not None:
            path = next(self.checkpoints.glob(f"*/trial-{trial}.pt"), None)
            step = _checkpoint_step(path) if path else None
        self.kills.append(Kill(at, worker.proc.pid, trial, step))

    def _exited(self, worker: Worker) -> bool:
        code = worker.proc.poll()
        if code not in (None, 0):
            self.crashed.append(f"{worker.log.name}: exit {code}: {_tail(worker.log)}")
        return code is not None

    # ------------------------------------------------------------------ the soak
    def run(self, seconds: float, echo=print) -> dict:
        from .config import RunConfig
        from .data import prepare_data
        data_cfg = RunConfig.from_dict({**SOAK_SPACE["fixed"], "dataset": self.dataset})
        prepare_data(data_cfg, self.scratch / "machine-soak" / "cache", log=lambda _m: None)   # fails early if bad
        where = "separate machines (own cache and temp folders)" if self.machines else "one machine"
        echo(f"soak: {self.workers} workers on {where}, study '{self.study}' to {self.trials} trials, a SIGKILL every "
             f"{self.kill_every[0]:g}-{self.kill_every[1]:g}s for {seconds:g}s; heartbeat {self.heartbeat}s, "
             f"grace {self.grace}s; scratch {self.scratch}")
        t0 = time.time()
        workers = [self.start(slot) for slot in range(self.workers)]
        try:
            while time.time() - t0 < seconds:
                time.sleep(self.rng.uniform(*self.kill_every))
                workers = [w for w in workers if not self._exited(w)]
                if not workers:
                    echo(f"soak: the study finished after {time.time() - t0:.0f}s, before the chaos ended; "
                         "raise --trials for a longer soak")
                    break
                # most kills land inside a trial; the others anywhere (starting, admitting, between trials)
                training = [w for w in workers if trial_in_training(w.proc.pid) is not None]
                victim = self.rng.choice(training if training and self.rng.random() < self.mid_trial else workers)
                self.kill(victim, time.time() - t0)
                workers[workers.index(victim)] = self.start(victim.slot)
                k = self.kills[-1]
                echo(f"soak: {k.at:5.0f}s kill #{len(self.kills)} (worker {victim.slot}"
                     + (f", trial {k.trial}" if k.trial is not None else ", between trials")
                     + (f", checkpoint at step {k.checkpoint_step}" if k.checkpoint_step else "") + ")")
            echo(f"soak: chaos over after {time.time() - t0:.0f}s and {len(self.kills)} kills; the workers finish "
                 "the study")
            drain_end = time.time() + self.drain_timeout
            while workers and time.time() < drain_end:
                time.sleep(1)
                workers = [w for w in workers if not self._exited(w)]
            if workers:
                self.crashed.append(f"{len(workers)} worker(s) still running {self.drain_timeout:.0f}s after the chaos")
        finally:
            for w in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait()
        return self.check(time.time() - t0, echo)

    # ------------------------------------------------------------------ the checks
    def check(self, wall: float, echo=print) -> dict:
        import optuna
        from optuna.trial import TrialState

        storage = optuna.storages.RDBStorage(self.storage)
        try:
            trials = optuna.load_study(study_name=self.study, storage=storage).get_trials(deepcopy=False)
        finally:
            storage.engine.dispose()
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        lost = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs]
        other_fails = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]
        retries = [t for t in trials if t.system_attrs.get("retry_history")]
        retried = {n for t in retries for n in t.system_attrs["retry_history"][-1:]}
        killed_pids = {k.pid for k in self.kills}
        ckpt_at_kill = {k.trial: k.checkpoint_step for k in self.kills if k.trial is not None}

        def chain(t) -> tuple[int, ...]:
            return (*t.system_attrs.get("retry_history", []), t.number)

        # each config: one chain (a trial and its retries); anything else trained it again
        runs: dict[str, set[int]] = {}
        for t in trials:
            if "duplicate_of" not in t.user_attrs:
                runs.setdefault(json.dumps(t.params, sort_keys=True), set()).add(chain(t)[0])
        duplicated = sum(len(origins) - 1 for origins in runs.values())
        lost_configs = [t.number for t in lost if not any(r for r in trials if t.number in chain(r)[:-1]
                                                          and r.state in (TrialState.COMPLETE, TrialState.PRUNED))]
        resumed = [t for t in retries if t.user_attrs.get("resumed_from_step", 0) > 0
                   and t.state == TrialState.COMPLETE]
        wrong_resume = []
        for t in retries:
            if t.state != TrialState.COMPLETE:
                continue
            steps = [ckpt_at_kill.get(n) for n in t.system_attrs["retry_history"]]
            if any(n not in ckpt_at_kill for n in t.system_attrs["retry_history"]):
                continue        # a kill before the trial's log was open: its checkpoint state is unknown
            expected = max((s for s in steps if s), default=0)
            if t.user_attrs.get("resumed_from_step") != expected:
                wrong_resume.append(f"trial {t.number}: resumed from {t.user_attrs.get('resumed_from_step')}, "
                                    f"its predecessors' checkpoints were at {steps}")
        spurious = [t.number for t in lost if t.user_attrs.get("worker", "").rsplit(":", 1)[-1] not in
                    {str(p) for p in killed_pids} and "worker" in t.user_attrs]
        mismatched = self.rerun(resumed, echo)
        figures = {
            "storage": "postgresql" if self.machines else "sqlite", "study": self.study, "workers": self.workers, "wall_s": round(wall),
            "trials": self.trials, "finished": len(finished), "over_count": len(finished) - self.trials,
            "kills": len(self.kills), "kills_mid_trial": sum(k.trial is not None for k in self.kills),
            "lost_trials": len(lost), "retries": len(retries), "resumes": len(resumed),
            "resumes_rerun_equal": len(resumed) - len(mismatched),
            "lost_configs": len(lost_configs), "duplicated": duplicated,
            "left_running": sum(t.state == TrialState.RUNNING for t in trials),
            "left_waiting": sum(t.state == TrialState.WAITING for t in trials),
            "other_fails": len(other_fails), "spurious_stale": len(spurious),
            "leftover_checkpoints": len(list(self.checkpoints.glob("*/trial-*.pt"))),
        }
        problems = []
        if figures["over_count"] != 0:
            problems.append(f"{len(finished)} finished trials, not {self.trials}")
        if figures["left_running"] or figures["left_waiting"]:
            problems.append(f"{figures['left_running']} running and {figures['left_waiting']} waiting trials left")
        if [n for n in (t.number for t in lost) if n not in retried]:
            problems.append(f"lost trials never retried: {[t.number for t in lost if t.number not in retried]}")
        if lost_configs:
            problems.append(f"configs lost with their retries: trials {lost_configs}")
        if duplicated:
            problems.append(f"{duplicated} config(s) trained again beyond their retries")
        if spurious:
            problems.append(f"trials failed as lost although their worker was not killed: {spurious}")
        if other_fails:
            problems.append("trials failed on their own: " + "; ".join(
                f"#{t.number} {t.user_attrs['fail_reason']}" for t in other_fails[:5]))
        problems += wrong_resume + mismatched + self.crashed
        if figures["leftover_checkpoints"]:
            problems.append(f"{figures['leftover_checkpoints']} checkpoint file(s) left behind")
        for log in self.scratch.glob("worker-*.log"):
            if "Traceback" in log.read_text(errors="replace"):
                problems.append(f"{log.name} has a traceback: {_tail(log)}")
        figures["problems"] = problems
        self.report(figures, echo)
        return figures

    def rerun(self, resumed: list, echo=print) -> list[str]:
        """Each resumed trial's config trained again here, uninterrupted, on one thread as the workers
        ran: its value and every evaluation must be the same numbers."""
        import torch

        from .config import RunConfig
        from .data import prepare_data
        from .train import train
        mismatched = []
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for t in resumed:
                cfg = RunConfig.from_dict(t.user_attrs["config"])
                data = prepare_data(cfg, self.scratch / "machine-soak" / "cache", log=lambda _m: None)
                result = train(cfg, data, device="cpu", progress=False, echo=None)
                curve = [v for _, v in result.curve]
                stored = [t.intermediate_values[i] for i in sorted(t.intermediate_values)]
                if result.val_loss != t.value or curve != stored:
                    mismatched.append(f"trial {t.number} (resumed from step {t.user_attrs['resumed_from_step']}): "
                                      f"value {t.value!r}, an uninterrupted rerun {result.val_loss!r}"
                                      + ("" if curve == stored else "; the curves differ"))
        finally:
            torch.set_num_threads(before)
        echo(f"soak: reran {len(resumed)} resumed trial(s) uninterrupted: {len(resumed) - len(mismatched)} equal "
             "bit for bit")
        return mismatched

    def report(self, f: dict, echo=print) -> None:
        echo(f"\nsoak on {f['storage']} ({f['workers']} workers, {f['wall_s']}s): {f['finished']} of {f['trials']} "
             f"trials finished (over-count {f['over_count']})")
        echo(f"  kills {f['kills']} ({f['kills_mid_trial']} mid-trial), lost trials {f['lost_trials']}, "
             f"retries {f['retries']}, resumes {f['resumes']} ({f['resumes_rerun_equal']} equal to a rerun), "
             f"lost configs {f['lost_configs']}, duplicated {f['duplicated']}")
        echo(f"  left running {f['left_running']}, waiting {f['left_waiting']}; spurious stale {f['spurious_stale']}, "
             f"other failures {f['other_fails']}, checkpoints left {f['leftover_checkpoints']}")
        if f["problems"]:
            echo("soak: FAILED:\n  " + "\n  ".join(f["problems"]))
        else:
            echo("soak: every check holds")


def trial_in_training(pid: int) -> int | None:
    """The number of the trial whose log (TrialRunner's trial-<n>.jsonl) the process has open, i.e.
    the trial it is training; None between trials. Linux (/proc)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            match = TRIAL_LOG.search(os.readlink(fd))
        except OSError:
            continue
        if match:
            return int(match.group(1))
    return None


def _checkpoint_step(path: Path) -> int | None:
    import torch
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return None


def _tail(path: Path, lines: int = 3) -> str:
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def soak(seconds: float, storage: str, dataset: str, trials: int, workers: int = 8, heartbeat: int = 2,
         grace: int = 20, json_path: str | None = None, echo=print) -> int:
    figures = Soak(storage=storage, dataset=dataset, trials=trials, workers=workers, heartbeat=heartbeat,
                   grace=grace).run(seconds, echo)
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=1))
    return 1 if figures["problems"] else 0
