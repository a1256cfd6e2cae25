"""mainrun-search from its options to its exit code: check every input before anything is
created, prepare the data once, open (or resume) the study, run rounds of workers until it holds
`--trials` finished trials, print the summary.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from ..config import RunConfig
from ..data import prepare_data
from ..errors import SearchError
from ..space import SearchSpace, load_space
from ..checkpoint import TrialCheckpoints
from ..commands import dashboard_command
from ..storage import StorageSettings, artifact_dir, check_storage_url, checkpoint_dir, open_storage
from .console import NO_GPU_WARNING, Echo, print_summary, say
from .objective import SearchObjective
from .study import finished_count, open_study
from .workers import ObjectiveFactory, WorkerContext, optuna_quieted, run_rounds, usable_cpus


class WorkerPlacement:
    """Where a command's workers train and with what memory, for options that carry `device`,
    `jobs`, `gpus`, `jobs_per_gpu`, `storage`, `artifacts` and `memory_budget_gib`: a search's,
    and the confirmation that runs its finalists on the same workers."""

    def uses_gpu(self) -> bool:
        """Whether the workers train on GPUs: named ones, or any the machine has (device auto)."""
        import torch
        return bool(self.gpus) or self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())

    def worker_devices(self, gpu: bool) -> list[str]:
        """One device name per worker, each checked to exist here before anything is created."""
        from ..train import resolve_device
        if self.gpus:
            devices = [f"cuda:{g}" for g in self.gpus for _ in range(self.jobs_per_gpu)]
        else:
            devices = [("cuda" if gpu else "cpu") if self.device == "auto" else self.device] * max(1, self.jobs)
        for name in sorted(set(devices)):
            resolve_device(name)
        return devices

    def worker_contexts(self, objective: ObjectiveFactory, study: optuna.Study, trials: int, devices: list[str],
                        artifacts: Path, start: float, deadline: float | None = None,
                        enqueued_only: bool = False, tensorboard: str | None = None,
                        checkpoints: str | None = None) -> list[WorkerContext]:
        """One context per worker; CPU workers share the cores this process may use."""
        threads = None if any(d.startswith("cuda") for d in devices) else max(1, usable_cpus() // len(devices))
        return [WorkerContext(objective=objective, storage=self.storage, study_name=study.study_name, trials=trials,
                              device=dev, artifacts=str(artifacts), worker=i, start_time=start,
                              finished_at_start=finished_count(study), threads=threads,
                              memory_budget_gib=self.memory_budget_gib, workers_on_device=devices.count(dev),
                              deadline=deadline, enqueued_only=enqueued_only, tensorboard=tensorboard,
                              checkpoints=checkpoints)
                for i, dev in enumerate(devices)]


@dataclass
class SearchOptions(WorkerPlacement):
    space: str
    trials: int = 40
    storage: StorageSettings = field(default_factory=StorageSettings)
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
    tensorboard: str | None = None       # a folder for each trial's TensorBoard event files
    checkpoint_dir: str | None = None    # default: beside the artifacts folder

    def base_config(self, space: SearchSpace) -> RunConfig:
        """What every trial starts from: the space's fixed fields, then --dataset."""
        return RunConfig.from_dict({"dataset": self.dataset} if self.dataset else {},
                                   base=RunConfig.from_dict(space.fixed))


@dataclass(frozen=True)
class Searched:
    """How a search ended: its exit code, and the study it ran (NAME-2 and so on with --new-study)."""
    exit_code: int
    study_name: str


def run_search(opts: SearchOptions, echo: Echo = say) -> Searched:
    """Prepare the data once, open the study, run workers until it holds `opts.trials`
    finished trials, print the summary."""
    space = load_space(opts.space, opts.sampler, opts.pruner)       # validated before anything exists
    base = opts.base_config(space)
    gpu = opts.uses_gpu()
    if not gpu and not space.cpu_ok:
        echo(NO_GPU_WARNING)
    devices = opts.worker_devices(gpu)
    check_storage_url(opts.storage.url)                             # a malformed URL fails before the data work
    if opts.tensorboard:
        from ..tensorboard import summary_writer_class
        summary_writer_class()                                      # a missing package, too
    data = prepare_data(base, opts.cache_dir)                       # once per study: workers hit the cache
    artifacts = artifact_dir(opts.storage.url, opts.artifacts)
    checkpoints = checkpoint_dir(opts.storage.url, opts.artifacts, opts.checkpoint_dir)
    check_folder_can_be_made(artifacts, "--artifacts")              # before a study exists that it would serve
    check_folder_can_be_made(checkpoints, "--checkpoint-dir")
    with optuna_quieted():
        storage = open_storage(opts.storage)                        # creates nothing if the data is unusable
        study = open_study(space, storage, opts.study or Path(opts.space).stem, data, base, opts.new_study,
                           echo=echo)
        try:
            artifacts.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SearchError(f"--artifacts {artifacts}: cannot make the folder ({e.strerror})") from None
        echo(f"search: watch it live with\n  {dashboard_command(opts.storage.url, artifacts)}")

        start, finished_at_start = time.time(), finished_count(study)
        if finished_at_start >= opts.trials:
            echo(f"search: study '{study.study_name}' already holds {finished_at_start} finished trials, at least "
                 f"--trials {opts.trials}; nothing to run (raise --trials to run more)")
        objective = SearchObjective(space=space, base=base, titles_sha256=data.titles_sha256, sampler=opts.sampler,
                                    pruner=opts.pruner, cache_dir=opts.cache_dir, seed=opts.seed)
        contexts = opts.worker_contexts(objective, study, opts.trials, devices, artifacts, start,
                                        deadline=start + opts.timeout if opts.timeout else None,
                                        tensorboard=opts.tensorboard, checkpoints=str(checkpoints))
        try:
            code = run_rounds(study, contexts, opts.trials, echo)
        finally:                                # checkpoints that no retry can use any more; best effort
            with contextlib.suppress(Exception):
                TrialCheckpoints(checkpoints).sweep(study)
    print_summary(study, opts.storage.url, artifacts, echo=echo, space=space)
    return Searched(code, study.study_name)


def check_folder_can_be_made(folder: Path, flag: str) -> None:
    """Refuse a folder that cannot exist (a file on its path) or cannot be written, creating nothing."""
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise SearchError(f"{flag} {folder}: {existing} is a file, so the folder cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SearchError(f"{flag} {folder}: {existing} is not writable")
