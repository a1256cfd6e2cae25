"""The Mainrun training loop and evaluate().

`train(cfg, data)` runs one full training run and returns a `RunResult`. After each
evaluation it hands (eval index, step, val loss) to an optional callback, which can stop
the run by returning True: that is how the search prunes. At the last evaluation the run is
already complete, so it is recorded as complete whatever the callback says. Observers
(`RunObserver`: a search objective, a TensorBoard writer) see the curves as they are made.

The loop keeps the token ids on the device and never waits for the GPU inside a step:
per-step losses go into a device buffer that is read (and logged) every few dozen steps.

Steps. A step is one micro-batch: batch_size sequences read from the training stream, one
forward and backward pass. With grad_accum_steps k the optimizer updates after every k-th step,
and after the run's last step whatever group it ends, on the mean gradient of the group's steps
(so k micro-batches of b sequences train like one batch of k*b): ceil(max_steps / k) updates.
- Steps per epoch, max_steps, the evaluation cadence, the step numbers in the log and the
  curves, and the pruner's evaluation indices count steps. An evaluation therefore happens at
  the same position in the data whatever k; it scores the weights of the last complete update.
- The schedule counts updates (warmup_steps too), as a scheduler stepped with the optimizer.
With k = 1 (the default) a step is an update, as in Mainrun.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TextIO

import torch
from tqdm import tqdm

from .checkpoint import Checkpointer
from .config import RunConfig
from .data import Data
from .errors import DeviceError, ScoringError
from .model import GPT
from .optim import make_optimizer, set_lr

# on_eval(eval_index, step, val_loss) -> True to stop the run early.
EvalCallback = Callable[[int, int, float], "bool | None"]
FLUSH_EVERY = 32   # steps between reads of the loss buffer (log lines, the train curve and the NaN check)


@dataclass
class RunResult:
    val_loss: float                                    # last evaluation's value (nan if it diverged)
    curve: list[tuple[int, float]] = field(default_factory=list)   # (step, val loss) per evaluation
    # (step, mean training loss over the steps read) at each read of the loss buffer: every
    # FLUSH_EVERY steps and at each evaluation; and the lr of that step's update, at the same steps
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    lr_curve: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    max_steps: int = 0
    optimizer_steps: int = 0                           # updates of the full run: max_steps / grad_accum_steps, up
    stopped_early: bool = False                        # the callback asked to stop
    diverged: str | None = None                        # why the run was stopped as NaN/inf
    n_params: int = 0
    prep_seconds: float = 0.0
    train_seconds: float = 0.0
    # the part of train_seconds up to the end of step 1 and its evaluation: optimizer, graph
    # capture, compilation, then one step and one scoring pass. The rest is the steady state.
    setup_seconds: float = 0.0
    # graphs that dynamo traced for this run (compiled runs only): 0 when the process had kept
    # the shape's compiled code from an earlier run (compile_model); None when uncompiled
    traced_graphs: int | None = None
    tokens_per_second: float = 0.0
    peak_memory_mb: float | None = None                # max_memory_allocated; measured on CUDA only
    device: str = "cpu"
    device_name: str = "cpu"                           # the GPU's model, without which timings mean little
    precision: str = "fp32"

    @property
    def device_label(self) -> str:                     # 'cuda:0 NVIDIA H200 (bf16)', 'cpu (fp32)'
        model = f" {self.device_name}" if self.device_name != self.device else ""
        return f"{self.device}{model} ({self.precision})"


class RunObserver:
    """What train() tells about a run as it goes: subclass and override what you need. Both
    calls come from the training loop between steps, so keep them quick."""

    def on_train(self, step: int, loss: float, lr: float, tokens_per_second: float) -> None:
        """At each read of the loss buffer: the mean training loss over the steps read (NaN or
        inf once a step diverged), the lr of `step`'s update, and the training throughput since
        the previous read (evaluation time left out; the first read includes the setup)."""

    def on_validation(self, index: int, step: int, loss: float) -> None:
        """After each evaluation: its index (the pruner's step), the step, the validation loss."""


class RunLog:
    """Mainrun's JSONL event log: one JSON object per line with 'event' and 'timestamp'."""

    def __init__(self, path: str | Path | None, append: bool = False):
        self.path = Path(path) if path else None
        self._file: TextIO | None = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if append else "w")

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
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r}: not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {name!r}: this machine has no CUDA GPU that torch {torch.__version__} can use")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {name!r}: this machine has {count} CUDA GPU(s), numbered from 0")
    return device


def resolve_precision(cfg: RunConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


def resolve_compile(cfg: RunConfig, device: torch.device, say: Callable[[str], None] = lambda _msg: None) -> str:
    """auto: regional on CUDA where Triton can build its launchers, else none (saying why there).
    An explicit mode that cannot run on this CUDA machine is refused before the run starts."""
    # On an H100, regional compilation won in a 3-worker search even though every new shape
    # compiled from a cold cache (docs/performance.md); on CPU it is untimed and costs a C compiler.
    blocker = cuda_compile_blocker() if device.type == "cuda" and cfg.compile != "none" else None
    if cfg.compile == "auto":
        if blocker:
            say(f"compile: auto runs uncompiled here: {blocker}")
        return "regional" if device.type == "cuda" and blocker is None else "none"
    if blocker:
        raise DeviceError(f"compile: {cfg.compile} cannot run here: {blocker}. Set compile: none (or auto), "
                          "or install what is missing")
    return cfg.compile


def cuda_compile_blocker() -> str | None:
    """Why torch.compile cannot run on CUDA on this machine, or None. Triton builds its kernel
    launchers at run time, with $CC or else gcc or clang, against Python's headers; without them
    every compiled run would fail at its first step (a runtime-only container image, say)."""
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        return "no C compiler ($CC, gcc or clang), which Triton needs to build its kernel launchers"
    scheme = sysconfig.get_default_scheme()
    include = sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]
    if not os.path.isfile(os.path.join(include, "Python.h")):
        return f"no Python headers ({include}/Python.h), which Triton builds its kernel launchers against"
    return None


def autocast(device: torch.device, precision: str):
    # cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA-graph capture
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


# A process keeps dynamo's compiled code from one run to the next, and drops it after this many
# runs. Dynamo keeps at most recompile_limit compiled versions of a function (a run of a new shape
# adds one) and past that runs it eagerly, which would change the run's values; the limit is
# raised to twice this, so a worker never gets there.
KEEP_COMPILED_RUNS = 16
_compiled_runs = 0                      # runs compiled since the last reset, in this process


def compile_model(model: GPT, mode: str) -> None:
    """torch.compile in place. 'regional' compiles each block (the blocks share one compiled
    graph, so compile time does not grow with depth) and the fp32 loss, where eager mode writes
    fp32 copies of the vocabulary-wide logits; 'model' compiles everything at once.
    Inductor's on-disk caches (TORCHINDUCTOR_CACHE_DIR, default /tmp/torchinductor_<user>)
    let any trial or worker on the machine load a graph another one already compiled, whatever
    its dropout: the rate is an input of the graphs, not a constant (model.Dropout). Within one
    process (a search worker) a shape trained before is not even traced again: its guards match
    the new model, and the run gets the very same compiled code."""
    global _compiled_runs
    if mode == "none":
        return
    if _compiled_runs >= KEEP_COMPILED_RUNS:
        torch.compiler.reset()
        _compiled_runs = 0
    _compiled_runs += 1
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * KEEP_COMPILED_RUNS)
    # With dropout, attention runs uncompiled between two graphs (model.attention_with_dropout):
    # resume tracing inside the attention module after that break, as the module's own frame, so
    # that a block stays two graphs around it rather than four (process-wide; read when tracing).
    torch._dynamo.config.nested_graph_breaks = True
    for module in ([*model.blocks, model.loss] if mode == "regional" else [model]):
        # dynamic=False: a new width compiles a static graph of its own, as in a fresh process,
        # instead of a dynamic-shape recompile of the last width (other kernels, other values)
        module.compile(dynamic=False)


def _traced_graphs() -> int:
    """How many graphs dynamo has traced in this process so far."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def lr_factor(cfg: RunConfig, step: int, max_steps: int) -> float:
    """The multiplier of cfg.lr for the update at 0-based `step` of `max_steps` updates (LambdaLR
    semantics; with gradient accumulation these count updates, not micro-batches: see Steps).
    cosine is the baseline's CosineAnnealingLR(T_max=max_steps), down to 0; constant stays at
    1 after its warmup."""
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max_steps))
    warmup = min(cfg.warmup_steps, max_steps - 1)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    if cfg.schedule == "warmup_cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.schedule == "wsd":                 # warmup, stable at lr, then a linear decay
        shape = min(1.0, (1.0 - progress) / cfg.decay_frac)
    elif cfg.schedule == "constant":            # min_lr_frac is 0 (validate() refuses another value)
        shape = 1.0
    else:
        shape = 1.0 - progress
    return cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * shape


def steps_per_epoch(cfg: RunConfig, n_train_ids: int) -> int:
    """Micro-batches of batch_size x block_size per epoch (see Steps: the steps count these)."""
    return n_train_ids // (cfg.block_size * cfg.batch_size)


def optimizer_steps(cfg: RunConfig, max_steps: int) -> int:
    """The optimizer updates of a run of `max_steps` steps: one per grad_accum_steps steps, and
    one for a shorter last group."""
    return -(-max_steps // cfg.grad_accum_steps)


def update_of(cfg: RunConfig, step: int) -> int:
    """The 0-based optimizer update that 1-based `step` contributes to (the schedule's index)."""
    return (step - 1) // cfg.grad_accum_steps


def eval_steps(cfg: RunConfig, batches: int) -> list[int]:
    """The steps after which Mainrun evaluates: step 1, every batches // evals_per_epoch, the last."""
    max_steps = cfg.epochs * batches
    interval = max(1, batches // cfg.evals_per_epoch)
    return [s for s in range(1, max_steps + 1) if s == 1 or s % interval == 0 or s == max_steps]


# ---------------------------------------------------------------------- evaluate()
class Scorer:
    """Mainrun's evaluate(): summed token cross-entropy over the non-overlapping windows of
    eval_batch_size x eval_block_size + 1 ids (remainder dropped), divided by the number of
    characters of the validation text. The window geometry is fixed by the config, not by
    the training batch, so every trial scores the same tokens. A model with a shorter
    context scores each window row in consecutive chunks of its own block size.

    With `graph=True` (CUDA) the forward pass of one window is captured once and replayed
    for every window."""

    def __init__(self, model: GPT, val_ids: torch.Tensor, cfg: RunConfig, val_chars: int,
                 precision: str = "fp32", graph: bool = False):
        self.model, self.val_ids, self.val_chars, self.precision = model, val_ids, val_chars, precision
        self.rows, self.width = cfg.eval_batch_size, cfg.eval_block_size
        self.span = self.rows * self.width + 1
        if len(val_ids) < self.span:
            raise ScoringError(f"the validation stream has {len(val_ids):,} tokens, fewer than one scoring window "
                               f"({self.rows} x {self.width} + 1 = {self.span:,}); use more titles or a smaller "
                               "eval geometry")
        self.starts = range(0, len(val_ids) - self.span + 1, self.span)
        self.window = torch.empty(self.span, dtype=torch.long, device=val_ids.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        if graph:
            self._capture()

    def _window_loss(self) -> torch.Tensor:
        x = self.window[:-1].view(self.rows, self.width)
        y = self.window[1:].view(self.rows, self.width)
        chunk = min(self.model.block_size, self.width)
        total = torch.zeros((), device=x.device)
        # Eagerly, even when the blocks are compiled: scoring's no-grad graphs would be two more
        # to compile in every run's setup (on an H100: ~2.4 s for a new shape, ~0.7 s from the
        # cache) for 0.3 s less scoring over the baseline's 22 passes (docs/performance.md).
        with autocast(x.device, self.precision), torch.compiler.set_stance("force_eager"):
            for start in range(0, self.width, chunk):
                _, loss = self.model(x[:, start:start + chunk], y[:, start:start + chunk], reduction="sum")
                total = total + loss
        return total

    @torch.no_grad()
    def _capture(self) -> None:
        self.window.copy_(self.val_ids[:self.span])
        with _eval_mode(self.model):
            _warm_up(self._window_loss)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.window_loss = self._window_loss()

    @torch.no_grad()
    def __call__(self) -> float:
        total = torch.zeros((), dtype=torch.float64, device=self.val_ids.device)
        with _eval_mode(self.model):
            for start in self.starts:
                self.window.copy_(self.val_ids[start:start + self.span])
                if self.graph is not None:
                    self.graph.replay()
                    total += self.window_loss
                else:
                    total += self._window_loss()
        return total.item() / self.val_chars


def evaluate(model: GPT, val_ids: torch.Tensor, cfg: RunConfig, val_chars: int, precision: str = "fp32") -> float:
    """Mainrun's evaluate() (see Scorer), run eagerly."""
    return Scorer(model, val_ids, cfg, val_chars, precision)()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _warm_up(fn, iterations: int = 3) -> None:
    """Run `fn` a few times on a side stream before graph capture, as CUDA graphs require."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iterations):
            fn()
    torch.cuda.current_stream().wait_stream(side)


# ---------------------------------------------------------------------- one training step
class TrainStep:
    """One step on static batch buffers: forward and backward of one micro-batch, and with
    `update=True` the optimizer update on the mean gradient of the steps since the previous
    update: grad clip, then the optimizer step. Without accumulation every call updates.

    With `graph=True` (CUDA, no accumulation) the whole step is captured once in a CUDA graph
    and replayed: one launch per step instead of several hundred, which is what bounds a model
    this size. The optimizer is fused with its learning rate in a device tensor, so the captured
    update reads the current value. The warm-up steps that capture needs run at lr 0 and the
    optimizer state is zeroed afterwards, so the run is the same run as the eager one.
    Accumulation runs eagerly (see capture_verified)."""

    def __init__(self, model: GPT, opt: torch.optim.Optimizer, cfg: RunConfig, device: torch.device,
                 precision: str, graph: bool = False):
        self.model, self.opt, self.cfg, self.precision = model, opt, cfg, precision
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.x = torch.zeros(cfg.batch_size, cfg.block_size, dtype=torch.long, device=device)
        self.y = torch.zeros_like(self.x)
        self.pending = 0                              # micro-batches whose gradients await an update
        self.graph: torch.cuda.CUDAGraph | None = None
        if graph:
            self._capture()

    def _forward_backward(self) -> torch.Tensor:
        with autocast(self.x.device, self.precision):
            _, loss = self.model(self.x, self.y)
        loss.backward()                               # adds to the gradients of the group's earlier steps
        return loss.detach()

    def _update(self, micro_batches: int) -> None:
        if micro_batches > 1:                         # the sum of the micro-batches' mean gradients -> their mean
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(micro_batches)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        self.opt.step()

    def _forward_backward_update(self) -> torch.Tensor:
        loss = self._forward_backward()
        self._update(1)
        return loss

    def _capture(self) -> None:
        lr = [group["lr"].clone() for group in self.opt.param_groups]
        set_lr(self.opt, 0.0)                         # warm-up must not move the weights

        def warm_step():
            self.opt.zero_grad(set_to_none=True)
            self._forward_backward_update()
        _warm_up(warm_step)
        for state in self.opt.state.values():         # a fresh optimizer: step 0, zero moments
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    value.zero_()
        for group, value in zip(self.opt.param_groups, lr):
            group["lr"].copy_(value)
        # grads are None at capture, so the captured backward writes them instead of adding
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self._forward_backward_update()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, update: bool = True) -> torch.Tensor:
        """The micro-batch's mean loss (a device tensor: reading it would wait for the GPU)."""
        self.x.copy_(x)
        self.y.copy_(y)
        if self.graph is not None:
            assert update, "a captured step always updates"
            self.graph.replay()
            return self.loss
        if self.pending == 0:
            self.opt.zero_grad(set_to_none=True)
        loss = self._forward_backward()
        self.pending += 1
        if update:
            self._update(self.pending)
            self.pending = 0
        return loss


def capture_verified(cfg: RunConfig) -> bool:
    """Whether whole-step CUDA-graph capture has been verified on a GPU for this config: fused
    AdamW, and fused SGD without momentum (the baseline), each without gradient accumulation.
    SGD with momentum is not verified yet and Muon's lr is a Python number that a graph would
    freeze: both run eagerly. Accumulation runs eagerly too: its gradients must survive from
    one replay to the next and its update be a graph of its own (or one graph per group size),
    none of which has run on a GPU yet; eager accumulation is the code the CPU tests check, and
    costs launch time only, never correctness."""
    return (cfg.optimizer == "adamw" or (cfg.optimizer == "sgd" and cfg.momentum == 0)) and cfg.grad_accum_steps == 1


# ---------------------------------------------------------------------- the loop
def train(cfg: RunConfig, data: Data, *, device: str | torch.device = "auto",
          on_eval: EvalCallback | None = None, log_path: str | Path | None = None,
          progress: bool = True, echo: Callable[[str], None] | None = print,
          observers: Sequence[RunObserver] = (), checkpoint: Checkpointer | None = None) -> RunResult:
    dev = resolve_device(device) if isinstance(device, str) else device
    precision = resolve_precision(cfg, dev)
    say = echo or (lambda _msg: None)
    if not cfg.comparable:
        say("!" * 78 + f"\n! NOT COMPARABLE WITH MAINRUN: mainrun_rules is off and these fixed fields changed: "
            f"{cfg.changed_fixed_fields()}\n" + "!" * 78)
    # Every random draw of the training comes from here: the init, dropout (eager, and compiled:
    # inductor seeds its own stream from torch's generator), on the CPU and every GPU. The data
    # split and the tokenizer were keyed by cfg.seed, so every train seed scores the same tokens.
    torch.manual_seed(cfg.effective_train_seed)
    random.seed(cfg.effective_train_seed)
    runlog = RunLog(log_path, append=checkpoint is not None and checkpoint.resumes)
    try:
        return _train(cfg, data, dev, precision, on_eval, runlog, progress, say, observers, checkpoint)
    finally:
        runlog.close()


def _train(cfg, data, dev, precision, on_eval, runlog, progress, say, observers, checkpoint) -> RunResult:
    runlog.log("hyperparameters_configured", **cfg.to_dict(), effective_train_seed=cfg.effective_train_seed,
               robustness_run=cfg.effective_train_seed != cfg.seed)
    compile_mode = resolve_compile(cfg, dev, say)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    runlog.log("device_info", device=str(dev), device_name=device_name, precision=precision, compile=compile_mode)
    train_ids = torch.as_tensor(data.train_ids, dtype=torch.long, device=dev)
    val_ids = torch.as_tensor(data.val_ids, dtype=torch.long, device=dev)
    batches = steps_per_epoch(cfg, len(train_ids))
    if batches < 1 or len(train_ids) < cfg.batch_size * cfg.block_size + 1:
        raise ScoringError(f"the training stream has {len(train_ids):,} tokens, fewer than one batch "
                           f"({cfg.batch_size} x {cfg.block_size}); use more titles or a smaller batch")
    max_steps = cfg.epochs * batches
    updates = optimizer_steps(cfg, max_steps)
    evals = set(eval_steps(cfg, batches))
    runlog.log("dataset_info", titles_count=data.n_train_titles, epochs=cfg.epochs, batches_per_epoch=batches,
               tokens_per_epoch=len(train_ids), vocab_size=data.vocab_size, grad_accum_steps=cfg.grad_accum_steps,
               optimizer_steps=updates)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model = GPT(cfg, data.vocab_size).to(dev)
    compile_model(model, compile_mode)
    traced_before = _traced_graphs() if compile_mode != "none" else None
    result = RunResult(val_loss=float("nan"), max_steps=max_steps, optimizer_steps=updates,
                       n_params=model.num_params(), prep_seconds=data.prep_seconds, device=str(dev),
                       device_name=device_name, precision=precision)
    runlog.log("model_info", parameters_count=result.n_params)
    t0 = time.perf_counter()                          # training time includes the graph capture
    graph = cfg.cuda_graph and dev.type == "cuda" and capture_verified(cfg)
    setup = []                          # said, or a cold compile is many silent seconds before step 1
    if compile_mode != "none":
        setup.append(f"torch.compile ({compile_mode})")
    if graph:
        setup.append("CUDA-graph capture")
    if setup:
        say(f"setup before step 1: {' and '.join(setup)}; slowest the first time this machine sees the shape")
    opt = make_optimizer(cfg, model, dev, capturable=graph)
    # The capture here (or, eagerly, the first step) allocates almost all the memory the run
    # needs: a config that does not fit fails at once with OutOfMemoryError, not halfway.
    train_step = TrainStep(model, opt, cfg, dev, precision, graph=graph)
    scorer = Scorer(model, val_ids, cfg, data.val_chars, precision, graph=graph)
    step_losses = torch.zeros(max_steps, device=dev)
    span, tokens = cfg.batch_size * cfg.block_size + 1, cfg.batch_size * cfg.block_size
    ptr, step, flushed, eval_index = 0, 0, 0, 0
    last_read, eval_seconds = t0, 0.0                 # for the throughput between reads
    if checkpoint is not None:                        # a resumed run goes on from its saved state
        ptr, step, flushed, eval_index, t0 = checkpoint.attach(model, opt, train_step, step_losses, result, t0)

    def lr_at(at_step: int) -> float:
        """The lr of the update that `at_step` contributes to."""
        return cfg.lr * lr_factor(cfg, update_of(cfg, at_step), updates)

    def flush() -> None:
        """Read the loss buffer once: log the steps since the last read, add a point to the
        train and lr curves, tell the observers, and catch NaN/inf."""
        nonlocal flushed, last_read, eval_seconds
        losses = step_losses[flushed:step].tolist()
        now = time.perf_counter()
        for i, loss in enumerate(losses, start=flushed + 1):
            runlog.log("training_step", step=i, max_steps=max_steps, loss=loss, lr=lr_at(i), elapsed_time=now - t0)
        mean, lr = math.fsum(losses) / len(losses), lr_at(step)
        result.train_curve.append((step, mean))
        result.lr_curve.append((step, lr))
        throughput = len(losses) * tokens / max(now - last_read - eval_seconds, 1e-9)
        for observer in observers:
            observer.on_train(step, mean, lr, throughput)
        flushed, last_read, eval_seconds = step, now, 0.0
        bad = next((loss for loss in losses if not math.isfinite(loss)), None)
        if bad is not None and result.diverged is None:
            result.diverged = f"training loss became {bad} by step {step}"

    model.train()
    done_epochs, done_batches = divmod(step, batches)
    for epoch in range(done_epochs + 1, cfg.epochs + 1):
        bar = tqdm(range(done_batches if epoch == done_epochs + 1 else 0, batches), desc=f"epoch {epoch}/{cfg.epochs}",
                   disable=not progress, leave=False, dynamic_ncols=True)
        for _ in bar:
            step += 1
            if ptr + span >= len(train_ids):      # Mainrun's get_batch(): wrap to the start
                ptr = 0
            x = train_ids[ptr:ptr + tokens].view(cfg.batch_size, cfg.block_size)
            y = train_ids[ptr + 1:ptr + 1 + tokens].view(cfg.batch_size, cfg.block_size)
            ptr += tokens
            update = step % cfg.grad_accum_steps == 0 or step == max_steps
            if update:
                set_lr(opt, lr_at(step))
            step_losses[step - 1] = train_step(x, y, update=update)

            if step % FLUSH_EVERY == 0 or step in evals:
                flush()
            if step in evals and result.diverged is None:
                started = time.perf_counter()
                val_loss = scorer()
                finished = time.perf_counter()
                eval_seconds += finished - started
                elapsed = finished - t0
                result.curve.append((step, val_loss))
                result.val_loss = val_loss
                if step == 1:
                    result.setup_seconds = elapsed
                runlog.log("validation_step", step=step, max_steps=max_steps, loss=val_loss, elapsed_time=elapsed)
                for observer in observers:
                    observer.on_validation(eval_index, step, val_loss)
                # above the bar when there is one (a plain print would tear it)
                (bar.write if progress else say)(f"[{step:>5}/{max_steps}] validation loss {val_loss:.4f}  "
                                                 f"({elapsed:.1f}s)")
                if not math.isfinite(val_loss):
                    result.diverged = f"validation loss became {val_loss} at step {step}"
                elif on_eval is not None and on_eval(eval_index, step, val_loss) and step < max_steps:
                    result.stopped_early = True       # at the last step there is nothing left to save
                eval_index += 1
            if checkpoint is not None:                # saves when due, and on a deferred Ctrl-C or SIGTERM
                checkpoint.step_done(step, ptr, flushed, eval_index, step in evals)
            if result.diverged or result.stopped_early:
                break
        bar.close()
        if result.diverged or result.stopped_early:
            break

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        result.peak_memory_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    result.train_seconds = time.perf_counter() - t0
    if traced_before is not None:
        result.traced_graphs = _traced_graphs() - traced_before
    del train_step, scorer                              # free the graphs' memory pools
    result.steps = step
    result.tokens_per_second = step * tokens / max(result.train_seconds, 1e-9)
    if result.diverged:
        result.val_loss = float("nan")
        say(f"run stopped: {result.diverged}")
    return result
