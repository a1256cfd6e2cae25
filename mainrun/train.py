"""The Mainrun training loop and evaluate().

`train(cfg, data)` runs one full training run and returns a `RunResult`. After each
evaluation it hands (eval index, step, val loss) to an optional callback, which can stop
the run by returning True: that is how the search prunes.

The loop keeps the token ids on the device and never waits for the GPU inside a step:
per-step losses go into a device buffer that is read (and logged) every few dozen steps.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import torch
from torch.nn import functional as F
from tqdm import tqdm

from .config import RunConfig
from .data import Data
from .model import GPT

# on_eval(eval_index, step, val_loss) -> True to stop the run early.
EvalCallback = Callable[[int, int, float], "bool | None"]
FLUSH_EVERY = 32   # steps between reads of the loss buffer (log lines and the NaN check)


class ScoringError(ValueError):
    """The validation stream cannot be scored with the configured geometry."""


@dataclass
class RunResult:
    val_loss: float                                    # last evaluation's value (nan if it diverged)
    curve: list[tuple[int, float]] = field(default_factory=list)   # (step, val loss) per evaluation
    steps: int = 0
    max_steps: int = 0
    stopped_early: bool = False                        # the callback asked to stop
    diverged: str | None = None                        # why the run was stopped as NaN/inf
    n_params: int = 0
    prep_seconds: float = 0.0
    train_seconds: float = 0.0
    tokens_per_second: float = 0.0
    peak_memory_mb: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"


class RunLog:
    """Mainrun's JSONL event log: one JSON object per line with 'event' and 'timestamp'."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._file: TextIO | None = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w")

    def log(self, event: str, **fields) -> None:
        if self._file:
            self._file.write(json.dumps({"event": event, "timestamp": time.time(), **fields}) + "\n")

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


# ---------------------------------------------------------------------- setup helpers
def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(cfg: RunConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(cfg: RunConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # fused kernels on CUDA: one launch for the whole update instead of one per tensor
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, **fast)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, **fast)


def lr_factor(cfg: RunConfig, step: int, max_steps: int) -> float:
    """The multiplier of cfg.lr for the update at 0-based `step` (LambdaLR semantics).
    cosine is the baseline's CosineAnnealingLR(T_max=max_steps), down to 0."""
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max_steps))
    warmup = min(cfg.warmup_steps, max_steps - 1)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "warmup_cosine" else 1.0 - progress
    return cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * shape


def steps_per_epoch(cfg: RunConfig, n_train_ids: int) -> int:
    return n_train_ids // (cfg.block_size * cfg.batch_size)


def eval_steps(cfg: RunConfig, batches: int) -> list[int]:
    """The steps after which Mainrun evaluates: step 1, every batches // evals_per_epoch, the last."""
    max_steps = cfg.epochs * batches
    interval = max(1, batches // cfg.evals_per_epoch)
    return [s for s in range(1, max_steps + 1) if s == 1 or s % interval == 0 or s == max_steps]


# ---------------------------------------------------------------------- evaluate()
@torch.no_grad()
def evaluate(model: GPT, val_ids: torch.Tensor, cfg: RunConfig, val_chars: int,
             precision: str = "fp32") -> float:
    """Mainrun's evaluate(): summed token cross-entropy over the non-overlapping windows of
    eval_batch_size x eval_block_size + 1 ids (remainder dropped), divided by the number of
    characters of the validation text. The window geometry is fixed by the config, not by
    the training batch, so every trial scores the same tokens. A model with a shorter
    context scores each window row in consecutive chunks of its own block size."""
    rows, width = cfg.eval_batch_size, cfg.eval_block_size
    span = rows * width + 1
    if len(val_ids) < span:
        raise ScoringError(f"the validation stream has {len(val_ids):,} tokens, fewer than one scoring window "
                           f"({rows} x {width} + 1 = {span:,}); use more titles or a smaller eval geometry")
    was_training = model.training
    model.eval()
    chunk = min(model.block_size, width)
    total = torch.zeros((), device=val_ids.device, dtype=torch.float64)
    with autocast(val_ids.device, precision):
        for ptr in range(0, len(val_ids) - span + 1, span):
            window = val_ids[ptr:ptr + span]
            x, y = window[:-1].view(rows, width), window[1:].view(rows, width)
            for start in range(0, width, chunk):
                _, loss = model(x[:, start:start + chunk], y[:, start:start + chunk], reduction="sum")
                total += loss
    model.train(was_training)
    return total.item() / val_chars


# ---------------------------------------------------------------------- the loop
def train(cfg: RunConfig, data: Data, *, device: str | torch.device = "auto",
          on_eval: EvalCallback | None = None, log_path: str | Path | None = None,
          progress: bool = True, echo: Callable[[str], None] | None = print) -> RunResult:
    dev = resolve_device(device) if isinstance(device, str) else device
    precision = resolve_precision(cfg, dev)
    say = echo or (lambda _msg: None)
    if not cfg.comparable:
        say("!" * 78 + f"\n! NOT COMPARABLE WITH MAINRUN: mainrun_rules is off and these fixed fields changed: "
            f"{cfg.changed_fixed_fields()}\n" + "!" * 78)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    runlog = RunLog(log_path)
    try:
        return _train(cfg, data, dev, precision, on_eval, runlog, progress, say)
    finally:
        runlog.close()


def _train(cfg, data, dev, precision, on_eval, runlog, progress, say) -> RunResult:
    runlog.log("hyperparameters_configured", **cfg.to_dict())
    runlog.log("device_info", device=str(dev), precision=precision)
    train_ids = torch.as_tensor(data.train_ids, dtype=torch.long, device=dev)
    val_ids = torch.as_tensor(data.val_ids, dtype=torch.long, device=dev)
    batches = steps_per_epoch(cfg, len(train_ids))
    if batches < 1:
        raise ScoringError(f"the training stream has {len(train_ids):,} tokens, fewer than one batch "
                           f"({cfg.batch_size} x {cfg.block_size}); use more titles or a smaller batch")
    max_steps = cfg.epochs * batches
    evals = set(eval_steps(cfg, batches))
    runlog.log("dataset_info", titles_count=data.n_train_titles, epochs=cfg.epochs, batches_per_epoch=batches,
               tokens_per_epoch=len(train_ids), vocab_size=data.vocab_size)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model = GPT(cfg, data.vocab_size).to(dev)
    result = RunResult(val_loss=float("nan"), max_steps=max_steps, n_params=model.num_params(),
                       prep_seconds=data.prep_seconds, device=str(dev), precision=precision)
    runlog.log("model_info", parameters_count=result.n_params)
    opt = make_optimizer(cfg, model, dev)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, max_steps))
    step_losses = torch.zeros(max_steps, device=dev)
    span, tokens = cfg.batch_size * cfg.block_size + 1, cfg.batch_size * cfg.block_size
    ptr, step, flushed, eval_index = 0, 0, 0, 0
    t0 = time.perf_counter()

    def flush() -> None:
        """Read the loss buffer once: log the steps since the last read and catch NaN/inf."""
        nonlocal flushed
        losses = step_losses[flushed:step].tolist()
        for i, loss in enumerate(losses, start=flushed + 1):
            runlog.log("training_step", step=i, max_steps=max_steps, loss=loss, elapsed_time=time.perf_counter() - t0)
        flushed = step
        bad = next((loss for loss in losses if not math.isfinite(loss)), None)
        if bad is not None and result.diverged is None:
            result.diverged = f"training loss became {bad} by step {step}"

    model.train()
    for epoch in range(1, cfg.epochs + 1):
        bar = tqdm(range(batches), desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False,
                   dynamic_ncols=True)
        for _ in bar:
            step += 1
            if ptr + span >= len(train_ids):      # Mainrun's get_batch(): wrap to the start
                ptr = 0
            x = train_ids[ptr:ptr + tokens].view(cfg.batch_size, cfg.block_size)
            y = train_ids[ptr + 1:ptr + 1 + tokens].view(cfg.batch_size, cfg.block_size)
            ptr += tokens
            with autocast(dev, precision):
                _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step_losses[step - 1] = loss.detach()

            if step % FLUSH_EVERY == 0 or step in evals:
                flush()
            if step in evals and result.diverged is None:
                val_loss = evaluate(model, val_ids, cfg, data.val_chars, precision)
                elapsed = time.perf_counter() - t0
                result.curve.append((step, val_loss))
                result.val_loss = val_loss
                runlog.log("validation_step", step=step, max_steps=max_steps, loss=val_loss, elapsed_time=elapsed)
                if progress:
                    bar.write(f"[{step:>5}/{max_steps}] validation loss {val_loss:.4f}  ({elapsed:.1f}s)")
                if not math.isfinite(val_loss):
                    result.diverged = f"validation loss became {val_loss} at step {step}"
                elif on_eval is not None and on_eval(eval_index, step, val_loss):
                    result.stopped_early = True
                eval_index += 1
            if result.diverged or result.stopped_early:
                break
        bar.close()
        if result.diverged or result.stopped_early:
            break

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        result.peak_memory_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    result.train_seconds = time.perf_counter() - t0
    result.steps = step
    result.tokens_per_second = step * tokens / max(result.train_seconds, 1e-9)
    if result.diverged:
        result.val_loss = float("nan")
        say(f"run stopped: {result.diverged}")
    return result
