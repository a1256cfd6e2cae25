"""One trial of a search: sample a run config from the space, train it (the pruner may stop it at
any evaluation), return its validation loss.

`SearchObjective` is what a search hands its workers: plain data (the validated space, the base
config, the inputs' identity) that crosses the process boundary; each worker `build`s the
callable objective from it once its own copy of the data is loaded. `TrialRunner` is the part any
objective that trains a fixed config as a trial can use: refused up front if it would not fit in
memory, trained with every evaluation reported and checkpointed (a retry of a lost trial resumes),
its measurements recorded as user attrs and its config and log kept as artifacts.
"""
from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from .. import __version__
from ..checkpoint import TrialCheckpoints
from ..config import RunConfig, read_yaml_text
from ..curves import CURVES_ATTR, curves_record, write_curves_png
from ..data import Data, prepare_data
from ..errors import ConfigError, DataError, InputsChanged, ScoringError, TrialFailed, TrialRefused, WorkerBroken
from ..formats import GIB, byte_size
from ..space import SearchSpace, load_space
from ..storage import drop_idle_connections
from .console import Echo, say
from .interrupts import Interrupt, check_interrupted
from .study import FINISHED, sampler_seed, set_policy
from .workers import Objective, WorkerContext

if TYPE_CHECKING:
    import torch

    from ..train import RunResult


@dataclass
class SearchObjective:
    """The search's trials as data: sample `space` on top of `base`. `titles_sha256` is the
    dataset the study was opened with, `sampler`/`pruner` the command line's replacements of the
    space file's policy (to read the file again the same way)."""
    space: SearchSpace
    base: RunConfig
    titles_sha256: str
    sampler: str | None = None
    pruner: str | None = None
    cache_dir: str | None = None
    seed: int | None = None

    def build(self, study: optuna.Study, ctx: WorkerContext) -> Objective:
        """The objective for this worker: its data loaded (from the cache the search filled), the
        study's sampler seeded for it, its device and memory budget."""
        data = self.checked_data()
        set_policy(study, self.space, sampler_seed(self.seed, ctx.worker, len(study.get_trials(deepcopy=False))))
        return search_objective(self.space, self.base, TrialRunner(data, ctx))

    def checked_data(self) -> Data:
        """The data, after checking that the space file and the titles are what the study was
        opened with: a later round of workers (after one died) would otherwise train the rest of
        the study on other inputs. The space is parsed again only if its text changed, since an
        edit of its comments alone changes nothing."""
        space = self.space
        try:
            if read_yaml_text(space.path) != space.text:
                space = load_space(space.path, self.sampler, self.pruner)
            data = prepare_data(self.base, self.cache_dir, log=lambda _m: None)   # a cache hit
        except (ConfigError, DataError) as e:
            raise InputsChanged(f"the search's inputs no longer load: {e}") from None
        for what, now, then in (("search space file " + space.path, space.sha256, self.space.sha256),
                                ("dataset " + self.base.dataset, data.titles_sha256, self.titles_sha256)):
            if now != then:
                raise InputsChanged(f"the {what} changed while the search ran; its trials would not compare. "
                                    "Put it back, or start a new study on the new inputs")
        return data


def search_objective(space: SearchSpace, base: RunConfig, run: TrialRunner) -> Objective:
    def objective(trial: optuna.Trial) -> float:
        try:
            cfg = space.suggest(trial, base)
        except ConfigError as e:                 # the space validation should make this impossible
            raise failed(trial, TrialFailed(str(e))) from None
        trial.set_user_attr("config", cfg.to_dict())
        twin = _finished_twin(trial)
        if twin is not None:                     # a sampler can propose a finished point again
            trial.set_user_attr("duplicate_of", twin.number)
            if twin.state == TrialState.PRUNED:
                trial.set_user_attr("prune_reason", f"same params as pruned trial {twin.number}")
                raise optuna.TrialPruned(f"duplicate of trial {twin.number}")
            return twin.value
        return run(trial, cfg)
    return objective


def _finished_twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """A finished trial with exactly these params: re-running it would spend a full run
    on a known answer (Optuna's FAQ recipe for duplicate suggestions)."""
    for other in trial.study.get_trials(deepcopy=False, states=FINISHED):
        if other.params == trial.params and other.number != trial.number:
            return other
    return None


# ---------------------------------------------------------------------- one config, trained as a trial
class TrialRunner:
    """Trains a run config as a trial on one worker's device, with that worker's memory budget."""

    def __init__(self, data: Data, ctx: WorkerContext, echo: Echo = say):
        from ..train import resolve_device
        self.data, self.echo = data, echo
        self.device = resolve_device(ctx.device)
        self.budget = memory_budget(self.device, ctx.memory_budget_gib, ctx.workers_on_device)
        self.store = optuna.artifacts.FileSystemArtifactStore(ctx.artifacts)
        self.commit = git_commit()
        self.tensorboard = Path(ctx.tensorboard) / ctx.study_name if ctx.tensorboard else None
        self.checkpoints = TrialCheckpoints(ctx.checkpoints, echo) if ctx.checkpoints else None

    def __call__(self, trial: optuna.Trial, cfg: RunConfig) -> float:
        import torch

        from ..tensorboard import TensorBoardWriter
        from ..train import train
        self._refuse_if_too_big(trial, cfg)
        trial.set_user_attr("mainrun_version", __version__)
        trial.set_user_attr("git_commit", self.commit)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")     # which machine and process
        workdir = Path(tempfile.mkdtemp(prefix="mainrun-trial-"))
        log_path = workdir / f"trial-{trial.number}.jsonl"
        last = {}

        def on_eval(index: int, step: int, val_loss: float) -> bool:
            check_interrupted()
            trial.report(val_loss, index)
            last.update(index=index, step=step, val_loss=val_loss)
            return trial.should_prune()

        observers = [TensorBoardWriter(self.tensorboard / f"trial-{trial.number}", cfg)] if self.tensorboard else []
        curves = None
        # a retry of a lost trial reports its predecessor's evaluations here and resumes from its checkpoint
        checkpoint = self.checkpoints.for_trial(trial, cfg, self.data, self.device) if self.checkpoints else None
        try:
            result = train(cfg, self.data, device=self.device, on_eval=on_eval, log_path=log_path,
                           progress=False, echo=None, observers=observers, checkpoint=checkpoint)
            curves = curves_record(result)
            trial.set_user_attr(CURVES_ATTR, curves)
        except torch.OutOfMemoryError as e:
            raise failed(trial, TrialFailed("CUDA out of memory: " + str(e).splitlines()[0])) from None
        except ScoringError as e:
            raise failed(trial, TrialFailed(str(e))) from None
        except torch.AcceleratorError as e:
            raise failed(trial, WorkerBroken("CUDA error: " + str(e).splitlines()[0])) from None
        finally:
            for observer in observers:
                observer.close()
            if self.checkpoints:                 # it ended here (not with its worker): nothing will resume it
                self.checkpoints.discard(trial)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if Interrupt.signal_name:             # a read it cut short may have left a connection unable to write
                drop_idle_connections(trial.storage)
            self._keep_artifacts(trial, workdir, cfg, log_path, curves)
        _record(trial, result)
        if result.diverged:
            trial.set_user_attr("prune_reason", f"diverged: {result.diverged}")
            raise optuna.TrialPruned(result.diverged)
        if result.stopped_early:
            reason = f"pruned at evaluation {last['index']} (step {last['step']}), val_loss {last['val_loss']:.4f}"
            trial.set_user_attr("prune_reason", reason)
            raise optuna.TrialPruned(reason)
        return result.val_loss

    def _refuse_if_too_big(self, trial: optuna.Trial, cfg: RunConfig) -> None:
        from ..memory import estimate_memory_bytes
        need = estimate_memory_bytes(cfg, self.data.vocab_size, self.device)
        trial.set_user_attr("memory_estimate_mb", round(need / 2**20))
        if self.budget is not None and need > self.budget[0]:
            trial.set_user_attr("refused", True)
            raise failed(trial, TrialRefused(f"does not fit: needs ~{byte_size(need)} by estimate; {self.budget[1]}"))

    def _keep_artifacts(self, trial: optuna.Trial, workdir: Path, cfg: RunConfig, log_path: Path,
                        curves: dict | None) -> None:
        """The run config, the JSONL log and the curves' PNG as trial artifacts (shown by
        optuna-dashboard). A full or unwritable artifacts folder costs the artifacts, never the
        trial's result."""
        config_path = workdir / f"trial-{trial.number}-config.yaml"
        curves_path = workdir / f"trial-{trial.number}-curves.png"
        try:
            cfg.to_yaml(config_path, header=f"mainrun run config of trial {trial.number}")
            if curves is not None:
                write_curves_png([(f"trial {trial.number}", curves, "#1f77b4")], curves_path)
            for path, mimetype in ((config_path, "application/yaml"), (log_path, "application/jsonl"),
                                   (curves_path, "image/png")):
                if path.exists():
                    optuna.artifacts.upload_artifact(artifact_store=self.store, file_path=str(path),
                                                     study_or_trial=trial, mimetype=mimetype)
        except OSError as e:
            trial.set_user_attr("artifact_error", str(e)[:300])
            self.echo(f"trial {trial.number}: its config and log were not saved as artifacts ({e}); "
                      "its result is kept")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _record(trial: optuna.Trial, result: RunResult) -> None:
    """What the run measured, as user attrs: the report's totals and tables are made from them."""
    trial.set_user_attr("n_params", result.n_params)
    trial.set_user_attr("prep_seconds", round(result.prep_seconds, 3))
    trial.set_user_attr("train_seconds", round(result.train_seconds, 3))
    trial.set_user_attr("setup_seconds", round(result.setup_seconds, 3))
    if result.traced_graphs is not None:
        trial.set_user_attr("traced_graphs", result.traced_graphs)   # 0: the worker had kept the shape
    trial.set_user_attr("tokens_per_second", round(result.tokens_per_second))
    if result.peak_memory_mb is not None:
        trial.set_user_attr("peak_memory_mb", round(result.peak_memory_mb, 1))
    trial.set_user_attr("device", result.device_label)
    trial.set_user_attr("steps", result.steps)
    trial.set_user_attr("max_steps", result.max_steps)


def failed(trial: optuna.Trial, error: Exception) -> Exception:
    """`error`, recorded as the trial's fail_reason: the dashboard, the report and the trial's
    line say why it failed."""
    trial.set_user_attr("fail_reason", str(error))
    return error


def memory_budget(device: torch.device, budget_gib: float | None, workers_on_device: int) -> tuple[int, str] | None:
    """(bytes one trial may use, where that number comes from): --memory-budget, else the device's
    memory shared by its workers (on the CPU the host's available memory, read when the worker
    starts); None where that cannot be read."""
    import torch
    if budget_gib is not None:
        budget = int(budget_gib * GIB)
        return budget, f"--memory-budget is {byte_size(budget)} per trial"
    if device.type != "cuda":
        available = available_memory()
        if available is None:
            return None
        share = available // workers_on_device
        return share, (f"the host has {byte_size(available)} available for {workers_on_device} worker(s), "
                       f"{byte_size(share)} each")
    props = torch.cuda.get_device_properties(device)
    share = props.total_memory // workers_on_device
    return share, (f"{props.name} has {byte_size(props.total_memory)} for {workers_on_device} worker(s), "
                   f"{byte_size(share)} each")


def available_memory() -> int | None:
    """Bytes this process could still allocate: MemAvailable from /proc/meminfo, or less where a
    cgroup (v2) memory limit leaves less, as in a container. None where neither can be read."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            limits += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(min(limits), 0) if limits else None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
