"""Checkpoints: a run's whole training state on disk, so that a run stopped part-way (Ctrl-C, SIGTERM,
a search worker that died) goes on where it stopped and ends at the value of an uninterrupted run,
bit for bit on the CPU.

What a checkpoint holds: the weights, every optimizer's state (both halves of muon), the step (the
lr schedule is a function of it; the groups' lr are in the optimizer state too), the data pointer,
the evaluation index, the loss buffer and how far it was read, the accumulated gradients of an
unfinished group, the curves so far (val, train, lr), the training seconds so far, and every random
generator: Python's, torch's CPU generator and each CUDA device's (compiled dropout draws its seeds
from the device's generator, so it is covered too).

Its fingerprint says what made it: the run config, mainrun's version and a digest of the modules a
run is made of, torch's version, the data (titles and tokenizer) and the device type. A checkpoint
whose fingerprint differs, or that is missing or unreadable (truncated), is not used.

When: at an evaluation (not step 1's), if the saves of this run so far and this one stay within
`share` (2%) of its training time so far, so that saving costs at most about 2% of a run wherever it
runs: a save is expected to take as long as the last one did (before the first: the state's bytes at
SAVE_BYTES_PER_SECOND), so a run saves at most every (seconds per save) / 2% seconds, and a run too
short to afford one saves none. And, where interrupts are deferred (mainrun-train), at the step
where Ctrl-C or SIGTERM came. Never at the last step: the run is over. Each save is atomic: a
temporary file, fsync, rename.

`Checkpointer` is the one object the training loop sees (`attach` before the first step, `step_done`
after each). `TrialCheckpoints` is a search's store: one file per trial, <dir>/<study>/trial-<n>.pt;
a retry of a lost trial resumes from its predecessors' latest checkpoint, found through Optuna's
retry history.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import re
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from . import __version__
from .errors import MainrunError

if TYPE_CHECKING:
    import optuna

    from .config import RunConfig
    from .data import Data

CHECKPOINT_SHARE = 0.02           # of a run's training time, at most, spent saving checkpoints
SAVE_BYTES_PER_SECOND = 2**30     # a save's speed until the first one is timed: a local disk's, low end
FORMAT = 1
RUN_FILE = "checkpoint.pt"        # mainrun-train --checkpoint-dir DIR: DIR/checkpoint.pt
# The modules that decide what a run computes: an edit of any of them makes old checkpoints unusable.
RUN_MODULES = ("config.py", "data.py", "model.py", "optim.py", "train.py", "checkpoint.py")


class CheckpointError(MainrunError):
    """A checkpoint cannot be used (missing, unreadable, made by another run): the message says why."""


# ---------------------------------------------------------------------- what made a checkpoint
@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    h = hashlib.sha256()
    for name in RUN_MODULES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def fingerprint(cfg: RunConfig, data: Data, device: torch.device) -> dict[str, Any]:
    return {"config": cfg.to_dict(), "mainrun": __version__, "code": code_digest(), "torch": str(torch.__version__),
            "data": data_digest(data), "device": device.type}


def data_digest(data: Data) -> str:
    """The token ids themselves, not only what they were made from: a machine whose tokenizer came
    out differently must not continue another machine's run."""
    h = hashlib.sha256()
    for ids in (data.train_ids, data.val_ids):
        h.update(str(ids.dtype).encode() + ids.tobytes())
    return h.hexdigest()[:16]


def mismatch(saved: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """What differs between the run that made a checkpoint and this one, said briefly; None if nothing."""
    if saved.get("config") != wanted["config"]:
        theirs = saved.get("config") or {}
        keys = [k for k in wanted["config"] if theirs.get(k) != wanted["config"][k]]
        shown = "; ".join(f"{k} {theirs.get(k)!r} there, {wanted['config'][k]!r} here" for k in keys[:3])
        return f"another config ({shown}{'; ...' if len(keys) > 3 else ''})"
    if (saved.get("mainrun"), saved.get("code")) != (wanted["mainrun"], wanted["code"]):
        return f"another mainrun code (version {saved.get('mainrun')}, modules {saved.get('code')}; " \
               f"here {wanted['mainrun']}, {wanted['code']})"
    for key, what in (("torch", "torch"), ("data", "dataset or tokenizer"), ("device", "device type")):
        if saved.get(key) != wanted[key]:
            return f"another {what} ({saved.get(key)}; here {wanted[key]})"
    return None


def load(path: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at `path` if this run can resume from it; else CheckpointError saying why."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state["fingerprint"]
        if state.get("format") != FORMAT:
            raise ValueError(f"format {state.get('format')}, not {FORMAT}")
    except Exception as e:    # a truncated or foreign file fails in the zip reader, the unpickler or a key
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"{path} is unreadable, truncated or not a mainrun checkpoint "
                              f"({type(e).__name__}: {reason})") from None
    different = mismatch(saved, wanted)
    if different:
        raise CheckpointError(f"{path} was made by {different}")
    return state


def atomic_save(state: dict[str, Any], path: Path) -> int:
    """torch.save to a temporary file beside `path`, fsync, rename over `path`; returns its size.
    A reader (or a crash at any moment) sees the old checkpoint or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):             # the rename itself, durable (not on every file system)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path.stat().st_size


# ---------------------------------------------------------------------- the training loop's side
def _optimizers(opt) -> tuple[torch.optim.Optimizer, ...]:
    return getattr(opt, "optimizers", (opt,))          # optim.Optimizers (muon + AdamW) or one optimizer


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    """load_state_dict, then the loaded values moved into the tensors the optimizer held before (its
    lr tensors, and its state where a CUDA-graph capture made it): a captured step reads those."""
    held_lr = [g["lr"] for g in opt.param_groups]
    held_state = {p: dict(s) for p, s in opt.state.items()}
    opt.load_state_dict(saved)
    for group, lr in zip(opt.param_groups, held_lr):
        if isinstance(lr, torch.Tensor):
            lr.copy_(group["lr"])
            group["lr"] = lr
    for p, before in held_state.items():
        for key, tensor in before.items():
            if isinstance(tensor, torch.Tensor):
                tensor.copy_(opt.state[p][key])
                opt.state[p][key] = tensor


def _rng_states() -> dict[str, Any]:
    return {"python": random.getstate(), "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["cpu"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


class Checkpointer:
    """Saves one run's state to `path` as it trains; given `resume` (a loaded checkpoint), the run
    starts from it. `share`: the most of the training time that saves may take (None: a save at every
    evaluation, for tests and benchmarks). `saves` records (seconds, bytes) of each save."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], resume: dict[str, Any] | None = None,
                 share: float | None = CHECKPOINT_SHARE, echo: Callable[[str], None] | None = None,
                 on_save: Callable[[int], None] | None = None):
        self.path, self.fingerprint, self.resume, self.share = Path(path), fingerprint, resume, share
        self.on_save = on_save or (lambda _step: None)
        self.resumes = resume is not None              # the run starts from a checkpoint (its log goes on)
        self.echo = echo or (lambda _msg: None)
        self.saves: list[tuple[float, int]] = []
        self.interrupt: str | None = None          # a deferred Ctrl-C / SIGTERM, saved at the end of its step
        self._run: tuple | None = None
        self._started = 0.0

    def attach(self, model, opt, train_step, step_losses: torch.Tensor, result,
               t0: float) -> tuple[int, int, int, int, float]:
        """Called by train() before its first step, with the objects it mutates: the model, its
        optimizer, its `TrainStep` (a gradient group cut mid-way) and its `RunResult` (the curves so
        far). Restores a resumed run into them; returns the loop's (data pointer, step, loss-buffer
        read position, evaluation index, t0 moved back by the seconds already trained). The loop's
        types are not imported: train imports this module."""
        self._run = (model, opt, train_step, step_losses, result, t0)
        self._started = time.perf_counter()
        if self.resume is None:
            return 0, 0, 0, 0, t0
        s, self.resume = self.resume, None              # its copy of the state is not kept for the whole run
        model.load_state_dict(s["model"])
        for o, saved in zip(_optimizers(opt), s["optimizers"], strict=True):
            _load_optimizer(o, saved)
        train_step.pending = s["pending"]
        if s["grads"] is not None:                      # a group cut mid-way (never under a CUDA graph)
            for p, grad in zip(train_step.params, s["grads"], strict=True):
                p.grad = None if grad is None else grad.to(p.device)
        step_losses[:s["step"]].copy_(s["step_losses"])
        result.curve[:], result.train_curve[:], result.lr_curve[:] = s["curve"], s["train_curve"], s["lr_curve"]
        result.setup_seconds = s["setup_seconds"]
        _set_rng_states(s["rng"])
        self._run = (model, opt, train_step, step_losses, result, t0 - s["seconds"])
        return s["ptr"], s["step"], s["flushed"], s["eval_index"], t0 - s["seconds"]

    def step_done(self, step: int, ptr: int, flushed: int, eval_index: int, at_eval: bool) -> None:
        """After each step (and its evaluation): save if due; on a deferred interrupt, save and stop."""
        result = self._run[4]
        over = step >= result.max_steps or result.stopped_early or result.diverged is not None
        if self.interrupt and not over:
            self.save(step, ptr, flushed, eval_index)
            self.echo(f"checkpoint: saved at step {step} of {result.max_steps} in {self.path} ({self.interrupt}); "
                      "--resume continues from it")
            raise KeyboardInterrupt(self.interrupt)
        if not over and at_eval and step > 1 and self._due():
            self.save(step, ptr, flushed, eval_index)

    def _due(self) -> bool:
        if self.share is None:
            return True
        spent = sum(seconds for seconds, _ in self.saves)
        next_save = self.saves[-1][0] if self.saves else self._state_bytes() / SAVE_BYTES_PER_SECOND
        return spent + next_save <= self.share * (time.perf_counter() - self._started)

    def _state_bytes(self) -> int:
        model, opt, _, step_losses, _, _ = self._run
        tensors = [*model.state_dict().values(), step_losses,
                   *(t for o in _optimizers(opt) for s in o.state.values() for t in s.values()
                     if isinstance(t, torch.Tensor))]
        return sum(t.numel() * t.element_size() for t in tensors)

    def save(self, step: int, ptr: int, flushed: int, eval_index: int) -> None:
        started = time.perf_counter()
        model, opt, train_step, step_losses, result, t0 = self._run
        pending = train_step.pending
        state = {
            "format": FORMAT, "fingerprint": self.fingerprint,
            "step": step, "ptr": ptr, "flushed": flushed, "eval_index": eval_index,
            "seconds": started - t0, "setup_seconds": result.setup_seconds,
            "curve": list(result.curve), "train_curve": list(result.train_curve), "lr_curve": list(result.lr_curve),
            "model": model.state_dict(), "optimizers": [o.state_dict() for o in _optimizers(opt)],
            "pending": pending, "grads": [p.grad for p in train_step.params] if pending else None,
            "step_losses": step_losses[:step].cpu(), "rng": _rng_states(),
        }
        size = atomic_save(state, self.path)
        self.saves.append((time.perf_counter() - started, size))
        self.on_save(step)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def interrupts_deferred(self):
        """Ctrl-C and SIGTERM stop the run at the end of the current step, after a save (a signal
        that lands inside an optimizer update must not leave half of it in the checkpoint). Before
        the first step, or at a second signal, they stop it at once."""
        def defer(signum, _frame):
            name = signal.Signals(signum).name
            if self._run is None or self.interrupt:
                raise KeyboardInterrupt(name)
            self.interrupt = name
            self.echo(f"checkpoint: {name}: stopping after this step (again to stop at once)")
        previous = {sig: signal.signal(sig, defer) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_checkpointer(folder: Path, cfg: RunConfig, data: Data, device: torch.device, resume: bool,
                     echo: Callable[[str], None] = print) -> Checkpointer:
    """mainrun-train --checkpoint-dir FOLDER [--resume]: the run's checkpointer. Without --resume a
    checkpoint already there is refused (it would be overwritten); with it, one that cannot be used."""
    path = Path(folder) / RUN_FILE
    wanted = fingerprint(cfg, data, device)
    if not resume:
        if path.exists():
            raise CheckpointError(f"--checkpoint-dir {folder} holds the checkpoint of an unfinished run ({path}); "
                                  "pass --resume to continue it, or use another folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"--checkpoint-dir {folder}: cannot make the folder ({e.strerror})") from None
        return Checkpointer(path, wanted, echo=echo)
    try:
        state = load(path, wanted)
    except CheckpointError as e:
        raise CheckpointError(f"--resume: {e}") from None
    echo(f"checkpoint: resuming from step {state['step']} ({path})")
    return Checkpointer(path, wanted, resume=state, echo=echo)


# ---------------------------------------------------------------------- a search's trials
class TrialCheckpoints:
    """A search's checkpoint folder: <root>/<study name>/trial-<number>.pt, one file per trial (the
    latest save). The fingerprint, not the name, decides whether a file is used, so a folder that
    several machines (or two databases' studies of one name) share is safe."""

    def __init__(self, root: str | Path, echo: Callable[[str], None] = print, share: float | None = CHECKPOINT_SHARE):
        self.root, self.echo, self.share = Path(root), echo, share

    def path(self, study_name: str, number: int) -> Path:
        return self._folder(study_name) / f"trial-{number}.pt"

    def _folder(self, study_name: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name).lstrip(".")
        if safe != study_name:                         # a name that is not a plain file name: kept apart by a digest
            safe = f"{safe}-{hashlib.sha256(study_name.encode()).hexdigest()[:8]}"
        return self.root / safe

    def for_trial(self, trial: optuna.Trial, cfg: RunConfig, data: Data, device: torch.device) -> Checkpointer:
        """The trial's checkpointer. A retry of a lost trial resumes from the latest usable checkpoint
        of the trials it retries: it reports their evaluations (the pruner and the dashboard see the
        whole curve) and records `resumed_from_step` (0 when it starts over, saying why)."""
        wanted = fingerprint(cfg, data, device)
        own = self.path(trial.study.study_name, trial.number)
        history = _retry_history(trial)

        def saved(step: int) -> None:             # the trial's progress, for the retry policy (RetryLostTrials)
            trial.set_user_attr("checkpoint_step", step)
        if not history:
            return Checkpointer(own, wanted, share=self.share, on_save=saved)
        usable, notes = [], []
        for number in history:
            try:
                usable.append((number, load(self.path(trial.study.study_name, number), wanted)))
            except CheckpointError as e:
                notes.append(str(e))
        if not usable:
            note = notes[-1] if notes else "no checkpoint"
            trial.set_user_attr("resumed_from_step", 0)
            trial.set_user_attr("checkpoint_step", 0)        # not its predecessor's, which it inherited
            trial.set_user_attr("resume_note", f"started over: {note}"[:500])
            self.echo(f"trial {trial.number}: retry of trial {history[-1]} starts from step 0: {note}")
            return Checkpointer(own, wanted, share=self.share, on_save=saved)
        number, state = max(usable, key=lambda u: u[1]["step"])
        for index, (_, value) in enumerate(state["curve"]):
            trial.report(value, index)
        trial.set_user_attr("resumed_from_step", state["step"])
        trial.set_user_attr("checkpoint_step", state["step"])
        trial.set_user_attr("resume_note", f"resumed from trial {number}'s checkpoint at step {state['step']}")
        self.echo(f"trial {trial.number}: retry of trial {history[-1]} resumes from step {state['step']} "
                  f"(trial {number}'s checkpoint)")
        return Checkpointer(own, wanted, resume=state, share=self.share, on_save=saved)

    def discard(self, trial: optuna.Trial) -> None:
        """A finished trial's checkpoint and its predecessors': nothing will resume them."""
        for number in (*_retry_history(trial), trial.number):
            self.path(trial.study.study_name, number).unlink(missing_ok=True)

    def sweep(self, study: optuna.Study) -> int:
        """Remove the checkpoints that nothing can resume any more: of trials that ended (a lost
        trial's retries ended too, or were never made), keeping those of running trials (perhaps
        lost, to be retried) and of the trials a waiting or running retry descends from. Returns
        how many were removed."""
        from optuna.trial import TrialState
        folder = self._folder(study.study_name)
        if not folder.is_dir():
            return 0
        trials = study.get_trials(deepcopy=False)
        alive = (TrialState.RUNNING, TrialState.WAITING)
        keep = {t.number for t in trials if t.state in alive}
        keep.update(n for t in trials if t.state in alive for n in t.system_attrs.get("retry_history", []))
        known = {t.number for t in trials}
        removed = 0
        for path in folder.glob("trial-*.pt"):
            number = path.stem.removeprefix("trial-")
            if number.isdigit() and int(number) in known and int(number) not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _retry_history(trial: optuna.Trial) -> list[int]:
    """The numbers of the trials this one retries, oldest first: the system attr that
    RetryHeartbeatStaleTrialCallback writes and its retry_history() reads (read here directly:
    that function is flagged experimental and would warn in every worker)."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    return list(frozen.system_attrs.get("retry_history", []))
