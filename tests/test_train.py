"""The schedule, the evaluation geometry, evaluate() and the training loop."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess

import pytest
import torch
from torch.nn import functional as F

from helpers import TINY, cli, make_titles
from mainrun import train as train_mod
from mainrun.config import RunConfig
from mainrun.data import prepare_data
from mainrun.model import GPT
from mainrun.train import ScoringError, evaluate, eval_steps, lr_factor, resolve_compile, steps_per_epoch, train

V = 300


def tiny(**changes) -> RunConfig:
    return RunConfig.from_dict({**TINY, **changes})


# ---------------------------------------------------------------------- lr_factor
def test_cosine_schedule_values():
    cfg = RunConfig()
    assert lr_factor(cfg, 0, 1000) == 1.0
    assert lr_factor(cfg, 500, 1000) == pytest.approx(0.5, abs=1e-12)
    assert lr_factor(cfg, 250, 1000) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), abs=1e-12)
    assert lr_factor(cfg, 1000, 1000) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("max_steps", [7, 224, 1000])
def test_cosine_matches_torch_cosine_annealing(max_steps):
    cfg = RunConfig()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_steps)
    for step in range(max_steps):
        assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_factor(cfg, step, max_steps),
                                                          rel=1e-9, abs=1e-15), step
        opt.step()
        sched.step()


@pytest.mark.parametrize("schedule", ["warmup_cosine", "linear"])
def test_warmup_schedules(schedule):
    cfg = RunConfig(schedule=schedule, warmup_steps=10, min_lr_frac=0.1)
    total = 110                                        # 10 warmup + 100 decay
    f = [lr_factor(cfg, s, total) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1)                  # (0 + 1) / 10
    assert f[4] == pytest.approx(0.5)
    assert f[9] == pytest.approx(1.0)                  # end of warmup
    assert f[10] == pytest.approx(1.0)                 # start of decay
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5)     # midpoint of the decay, both shapes
    assert f[110] == pytest.approx(0.1)                # the end: min_lr_frac
    assert all(a < b for a, b in zip(f[:10], f[1:10]))                    # rising warmup
    assert all(a >= b for a, b in zip(f[10:], f[11:]))                    # falling decay
    quarter = 0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi / 4)) if schedule == "warmup_cosine" else 0.75)
    assert f[35] == pytest.approx(quarter)


def test_warmup_without_floor_and_without_warmup():
    assert lr_factor(RunConfig(schedule="linear"), 0, 100) == 1.0
    assert lr_factor(RunConfig(schedule="linear"), 100, 100) == pytest.approx(0.0)
    assert lr_factor(RunConfig(schedule="warmup_cosine", min_lr_frac=0.2), 100, 100) == pytest.approx(0.2)


def test_constant_schedule_holds_the_lr_after_an_optional_warmup():
    assert [lr_factor(RunConfig(schedule="constant"), s, 50) for s in range(51)] == [1.0] * 51
    cfg = RunConfig(schedule="constant", warmup_steps=10)
    f = [lr_factor(cfg, s, 50) for s in range(50)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])     # the same warmup as the others
    assert f[9:] == [1.0] * 41


def test_warmup_longer_than_the_run_is_clamped():
    cfg = RunConfig(schedule="warmup_cosine", warmup_steps=1000)
    f = [lr_factor(cfg, s, 50) for s in range(50)]
    assert all(0 < x <= 1.0 for x in f)
    assert f[48] == pytest.approx(1.0)                 # warmup ends at the last step
    assert lr_factor(cfg, 0, 1) == 1.0                 # a one-step run: no division by zero


# ---------------------------------------------------------------------- evaluation steps
def test_eval_steps_tiny():
    cfg = tiny()
    steps = eval_steps(cfg, 32)                         # interval 10, 224 steps
    assert steps == [1] + list(range(10, 221, 10)) + [224]


@pytest.mark.parametrize("batches", [3, 31, 100, 1000, 1407])
def test_eval_steps_rule(batches):
    cfg = RunConfig()
    steps = eval_steps(cfg, batches)
    interval, last = batches // 3, 7 * batches
    expected = sorted({1, last} | set(range(interval, last + 1, interval)))
    assert steps == expected
    assert steps[0] == 1 and steps[-1] == last
    assert all(a < b for a, b in zip(steps, steps[1:]))


def test_eval_steps_with_fewer_batches_than_evals():
    assert eval_steps(RunConfig(), 2) == list(range(1, 15))          # interval clamps to 1


def test_steps_per_epoch():
    cfg = tiny()                                        # 8 x 32 = 256 tokens per step
    assert steps_per_epoch(cfg, 256 * 5) == 5
    assert steps_per_epoch(cfg, 256 * 5 + 255) == 5


# ---------------------------------------------------------------------- evaluate()
# evaluate() sums each scoring chunk's token losses in fp32 (at most 4 x 32 = 128 terms here) and
# the chunks in fp64; a reordered fp32 sum of n positive terms is within n roundings of the exact
# one. A scoring mistake (a token dropped, a window missed) moves the value by 1/640 or more.
SCORING_RTOL = 4 * 32 * torch.finfo(torch.float32).eps


def reference_loss(model, val_ids, rows, width, val_chars, chunk=None):
    """Written out independently: windows of rows*width+1 ids, stepping by the window,
    summed token cross-entropy (in float64), divided by the characters."""
    chunk = chunk or width
    span = rows * width + 1
    total, windows = 0.0, 0
    model.eval()
    with torch.no_grad():
        start = 0
        while start + span <= len(val_ids):
            window = val_ids[start:start + span]
            x, y = window[:-1].reshape(rows, width), window[1:].reshape(rows, width)
            for c in range(0, width, chunk):
                logits, _ = model(x[:, c:c + chunk])
                total += F.cross_entropy(logits.double().reshape(-1, logits.size(-1)),
                                         y[:, c:c + chunk].reshape(-1), reduction="sum").item()
            start += span
            windows += 1
    return total / val_chars, windows


def small_model(cfg, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg, V)


@pytest.fixture
def val_ids():
    g = torch.Generator().manual_seed(1)
    span = 4 * 32 + 1
    return torch.randint(0, V, (5 * span + 17,), generator=g)       # 5 windows and a remainder


def test_evaluate_matches_an_independent_computation(val_ids):
    cfg = tiny()
    model = small_model(cfg)
    got = evaluate(model, val_ids, cfg, val_chars=12345)
    want, windows = reference_loss(model, val_ids, 4, 32, 12345)
    assert windows == 5
    assert got == pytest.approx(want, rel=SCORING_RTOL)


def test_evaluate_of_a_uniform_model_is_ln_vocab_per_token(val_ids):
    cfg = tiny(tie_embeddings=False)
    model = small_model(cfg)
    with torch.no_grad():
        model.head.weight.zero_()                      # all logits 0: every token costs ln(V)
    got = evaluate(model, val_ids, cfg, val_chars=1000)
    assert got == pytest.approx(5 * 4 * 32 * math.log(V) / 1000, rel=SCORING_RTOL)


def test_evaluate_drops_the_remainder_and_reads_every_window(val_ids):
    cfg = tiny()
    model = small_model(cfg)
    base = evaluate(model, val_ids, cfg, 1000)
    tail = val_ids.clone()
    tail[-17:] = (tail[-17:] + 1) % V                  # the remainder is not scored
    assert evaluate(model, tail, cfg, 1000) == base
    for pos in (5, 4 * 32 * 3 + 40):                   # a token inside window 0 and window 3
        inside = val_ids.clone()
        inside[pos] = (inside[pos] + 1) % V
        assert evaluate(model, inside, cfg, 1000) != base


def test_evaluate_restores_the_mode(val_ids):
    cfg = tiny()
    model = small_model(cfg)
    model.train()
    evaluate(model, val_ids, cfg, 1000)
    assert model.training
    model.eval()
    evaluate(model, val_ids, cfg, 1000)
    assert not model.training


def test_evaluate_ignores_dropout(val_ids):
    cfg = tiny(dropout=0.5)
    model = small_model(cfg).train()
    assert evaluate(model, val_ids, cfg, 1000) == evaluate(model, val_ids, cfg, 1000)


def test_evaluate_is_independent_of_the_training_batch_size(val_ids):
    a, b = tiny(batch_size=8), tiny(batch_size=32)
    assert a.to_dict() | {"batch_size": 0} == b.to_dict() | {"batch_size": 0}
    model = small_model(a)
    assert evaluate(model, val_ids, a, 999) == evaluate(model, val_ids, b, 999)


class Recorder(torch.nn.Module):
    """The real model, with a record of the (inputs, targets) each call was given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.block_size, self.calls = model, model.block_size, []

    def forward(self, idx, targets=None, reduction="mean"):
        self.calls.append((idx.clone(), None if targets is None else targets.clone()))
        return self.model(idx, targets, reduction=reduction)


def scored(recorder, rows, width):
    """The targets of each window, reassembled from the chunks the model was called with."""
    per_window, row = [], []
    for x, y in recorder.calls:
        assert x.shape == y.shape and x.size(0) == rows
        row.append(y)
        if sum(t.size(1) for t in row) == width:
            per_window.append(torch.cat(row, dim=1))
            row = []
    assert not row
    return per_window


@pytest.mark.parametrize("block", [16, 12, 5])
def test_a_shorter_context_model_scores_the_same_tokens(val_ids, block):
    cfg = tiny()                                       # eval geometry 4 x 32
    full = Recorder(small_model(cfg))
    short = Recorder(small_model(tiny(block_size=block)))
    evaluate(full, val_ids, cfg, 1000)
    value = evaluate(short, val_ids, cfg, 1000)
    assert all(x.size(1) <= block for x, _ in short.calls)
    assert all(x.size(1) == 32 for x, _ in full.calls)
    a, b = scored(full, 4, 32), scored(short, 4, 32)
    assert len(a) == len(b) == 5
    for wa, wb in zip(a, b):
        assert torch.equal(wa, wb)
    # and the inputs are the ids just before each target
    span = 4 * 32 + 1
    for w, window in enumerate(b):
        assert torch.equal(window, val_ids[w * span + 1:(w + 1) * span].view(4, 32))
    want, _ = reference_loss(short.model, val_ids, 4, 32, 1000, chunk=block)
    assert value == pytest.approx(want, rel=SCORING_RTOL)


def test_short_validation_stream_is_a_scoring_error():
    cfg = tiny()
    model = small_model(cfg)
    span = 4 * 32 + 1
    with pytest.raises(ScoringError) as info:
        evaluate(model, torch.zeros(span - 1, dtype=torch.long), cfg, 1000)
    assert "128" in str(info.value) and "129" in str(info.value)
    with pytest.raises(ScoringError):
        evaluate(model, torch.zeros(0, dtype=torch.long), cfg, 1000)
    value = evaluate(model, torch.zeros(span, dtype=torch.long), cfg, 1000)   # exactly one window
    assert math.isfinite(value) and value > 0


# ---------------------------------------------------------------------- train()
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """One prepared tiny corpus for the module (the HF cache isolated like conftest does)."""
    base = tmp_path_factory.mktemp("train_data")
    path = base / "titles.txt"
    path.write_text("\n".join(make_titles(1500)) + "\n")
    cfg = tiny(dataset=str(path))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(base / "hf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        data = prepare_data(cfg, base / "cache", log=lambda _m: None)
    return cfg, data


class Recording(train_mod.RunObserver):
    def __init__(self):
        self.train, self.validation = [], []

    def on_train(self, step, loss, lr, tokens_per_second):
        self.train.append((step, loss, lr, tokens_per_second))

    def on_validation(self, index, step, loss):
        self.validation.append((index, step, loss))


@pytest.fixture(scope="module")
def full_run(tiny_data, tmp_path_factory):
    cfg, data = tiny_data
    log = tmp_path_factory.mktemp("run") / "logs" / "run.jsonl"
    seen, observer = [], Recording()
    result = train(cfg, data, device="cpu", log_path=log, progress=False, echo=None,
                   on_eval=lambda i, step, loss: seen.append((i, step, loss)), observers=[observer])
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return cfg, data, result, events, seen, observer



def test_a_runs_device_label_names_the_gpu_model_that_its_timings_mean():
    from mainrun.train import RunResult
    gpu = RunResult(val_loss=1.0, device="cuda:0", device_name="NVIDIA H200", precision="bf16")
    assert gpu.device_label == "cuda:0 NVIDIA H200 (bf16)"
    assert RunResult(val_loss=1.0).device_label == "cpu (fp32)"

def test_full_run_result(full_run):
    cfg, data, result, _, seen, _ = full_run
    batches = steps_per_epoch(cfg, len(data.train_ids))
    assert batches == len(data.train_ids) // 256 > 3
    assert result.max_steps == 7 * batches
    assert result.steps == result.max_steps
    assert not result.stopped_early and result.diverged is None
    assert math.isfinite(result.val_loss) and result.val_loss > 0
    assert [s for s, _ in result.curve] == eval_steps(cfg, batches)
    assert result.val_loss == result.curve[-1][1]
    assert all(math.isfinite(v) for _, v in result.curve)
    assert result.curve[-1][1] < result.curve[0][1]          # it learned something
    assert seen == [(i, s, v) for i, (s, v) in enumerate(result.curve)]
    assert result.n_params == GPT(cfg, data.vocab_size).num_params()
    assert (result.device, result.precision) == ("cpu", "fp32")
    assert result.train_seconds > 0 and result.tokens_per_second > 0
    # setup is the time to the end of step 1's evaluation: part of the training time, not all of it
    assert 0 < result.setup_seconds < result.train_seconds


def test_full_run_log(full_run):
    cfg, data, result, events, _, _ = full_run
    kinds = [e["event"] for e in events]
    assert all(isinstance(e["timestamp"], float) for e in events)
    for needed in ("hyperparameters_configured", "dataset_info", "model_info", "training_step", "validation_step"):
        assert needed in kinds, needed
    assert kinds.index("hyperparameters_configured") < kinds.index("dataset_info") < kinds.index("model_info") \
        < kinds.index("training_step")
    hyper = next(e for e in events if e["event"] == "hyperparameters_configured")
    assert {k: hyper[k] for k in cfg.to_dict()} == cfg.to_dict()
    info = next(e for e in events if e["event"] == "dataset_info")
    assert info["batches_per_epoch"] == result.max_steps // 7 and info["epochs"] == 7
    assert info["titles_count"] == data.n_train_titles and info["vocab_size"] == data.vocab_size
    assert next(e for e in events if e["event"] == "model_info")["parameters_count"] == result.n_params
    train_steps = [e for e in events if e["event"] == "training_step"]
    assert [e["step"] for e in train_steps] == list(range(1, result.max_steps + 1))      # one per step
    assert all(math.isfinite(e["loss"]) and e["max_steps"] == result.max_steps for e in train_steps)
    val = [(e["step"], e["loss"]) for e in events if e["event"] == "validation_step"]
    assert val == result.curve
    assert [e["lr"] for e in train_steps] == [cfg.lr * lr_factor(cfg, s - 1, result.max_steps)
                                              for s in range(1, result.max_steps + 1)]


def test_full_run_curves_and_what_the_observers_saw(full_run):
    """The train curve has a point at each read of the loss buffer: every FLUSH_EVERY steps and
    at each evaluation, with the mean of the losses logged for the steps read; the lr curve the
    lr of those steps' updates; an observer sees the same, and every evaluation."""
    cfg, data, result, events, _, observer = full_run
    planned = eval_steps(cfg, steps_per_epoch(cfg, len(data.train_ids)))
    reads = sorted(set(planned) | set(range(train_mod.FLUSH_EVERY, result.max_steps + 1, train_mod.FLUSH_EVERY)))
    logged = {e["step"]: e for e in events if e["event"] == "training_step"}
    assert [s for s, _ in result.train_curve] == [s for s, _ in result.lr_curve] == reads
    for (step, mean), before in zip(result.train_curve, [0] + reads):
        assert mean == pytest.approx(math.fsum(logged[s]["loss"] for s in range(before + 1, step + 1))
                                     / (step - before), rel=1e-15)
    assert result.lr_curve == [(s, logged[s]["lr"]) for s in reads]
    assert result.train_curve[-1][1] < result.train_curve[0][1]
    assert [(s, loss, lr) for s, loss, lr, _ in observer.train] == [
        (s, loss, lr) for (s, loss), (_, lr) in zip(result.train_curve, result.lr_curve)]
    assert all(tps > 0 and math.isfinite(tps) for *_, tps in observer.train)
    assert observer.validation == [(i, s, v) for i, (s, v) in enumerate(result.curve)]

def test_on_eval_true_stops_the_run(tiny_data, full_run):
    cfg, data = tiny_data
    calls = []

    def on_eval(index, step, loss):
        calls.append((index, step, loss))
        return index == 2

    result = train(cfg, data, device="cpu", on_eval=on_eval, progress=False, echo=None)
    planned = eval_steps(cfg, steps_per_epoch(cfg, len(data.train_ids)))
    assert result.stopped_early is True and result.diverged is None
    assert result.steps == planned[2] < result.max_steps
    assert [s for s, _ in result.curve] == planned[:3]
    assert [c[1] for c in calls] == planned[:3] and [c[0] for c in calls] == [0, 1, 2]
    assert result.val_loss == result.curve[-1][1] == calls[-1][2]
    # same seed, same run: the values match the full run's first three evaluations exactly
    assert result.curve == full_run[2].curve[:3]
    assert result.train_curve == full_run[2].train_curve[:len(result.train_curve)]


def test_a_stop_asked_at_the_last_evaluation_leaves_the_run_complete(tiny_data, full_run):
    """A pruner that says stop at the final evaluation saves nothing: the run is complete, and
    the search records its value instead of a pruned trial."""
    cfg, data = tiny_data
    result = train(cfg, data, device="cpu", progress=False, echo=None,
                   on_eval=lambda index, step, loss: step == full_run[2].max_steps)
    assert not result.stopped_early and result.steps == result.max_steps
    assert result.curve == full_run[2].curve


def test_huge_lr_diverges(tiny_data):
    cfg, data = tiny_data
    messages = []
    result = train(cfg.replace(lr=1e30), data, device="cpu", progress=False, echo=messages.append)
    assert result.diverged
    assert math.isnan(result.val_loss)
    assert result.steps < result.max_steps
    assert not result.stopped_early
    assert any("run stopped" in m for m in messages)


def test_nan_training_loss_stops_the_run(tiny_data, monkeypatch):
    """NaN in the training loss (not at an evaluation) is caught at the next read of the loss buffer."""
    cfg, data = tiny_data

    class NanAtStep5(GPT):
        calls = 0

        def forward(self, idx, targets=None, reduction="mean"):
            logits, loss = super().forward(idx, targets, reduction)
            if self.training:
                NanAtStep5.calls += 1
                if NanAtStep5.calls == 5:
                    loss = loss * float("nan")
            return logits, loss

    monkeypatch.setattr(train_mod, "GPT", NanAtStep5)
    result = train(cfg, data, device="cpu", progress=False, echo=None)
    planned = eval_steps(cfg, steps_per_epoch(cfg, len(data.train_ids)))
    next_read = min(s for s in planned + [train_mod.FLUSH_EVERY] if s >= 5)
    assert result.diverged and "training loss" in result.diverged
    assert math.isnan(result.val_loss)
    assert result.steps == next_read < result.max_steps      # stopped at the next read of the buffer
    assert [s for s, _ in result.curve] == [s for s in planned if s < 5]   # no evaluation of a NaN model


def train_recording_the_lr_of_each_update(cfg, data, monkeypatch):
    """A run, and the lr the optimizer held at each of its updates."""
    used, real = [], train_mod.make_optimizer

    def recording(*args, **kwargs):
        opt = real(*args, **kwargs)
        opt.register_step_pre_hook(lambda o, _args, _kwargs: used.append(float(o.param_groups[0]["lr"])))
        return opt

    monkeypatch.setattr(train_mod, "make_optimizer", recording)
    return train(cfg, data, device="cpu", progress=False, echo=None), used


def test_the_loop_uses_the_schedule(tiny_data, monkeypatch):
    """The lr of update k (0-based) is cfg.lr * lr_factor(cfg, k, max_steps): LambdaLR semantics."""
    cfg, data = tiny_data
    cfg = cfg.replace(schedule="warmup_cosine", warmup_steps=5, min_lr_frac=0.1, batch_size=32, epochs=3,
                      evals_per_epoch=1)
    result, used = train_recording_the_lr_of_each_update(cfg, data, monkeypatch)
    assert len(used) == result.max_steps == 3 * steps_per_epoch(cfg, len(data.train_ids))
    assert used == pytest.approx([cfg.lr * lr_factor(cfg, s, result.max_steps) for s in range(result.max_steps)])


def test_the_loop_reads_batches_like_mainruns_get_batch(tiny_data, monkeypatch):
    """Consecutive non-overlapping batches of batch x block ids, targets shifted by one, and
    back to the start when the next batch's span would reach the end of the stream."""
    cfg, data = tiny_data
    cfg = cfg.replace(batch_size=32, epochs=3, evals_per_epoch=1)
    seen = []

    class RecordingStep(train_mod.TrainStep):
        def __call__(self, x, y, update=True):
            seen.append((x.clone(), y.clone()))
            return super().__call__(x, y, update)

    monkeypatch.setattr(train_mod, "TrainStep", RecordingStep)
    result = train(cfg, data, device="cpu", progress=False, echo=None)
    ids = torch.as_tensor(data.train_ids, dtype=torch.long)
    tokens, ptr, wrapped = cfg.batch_size * cfg.block_size, 0, 0
    assert len(seen) == result.max_steps
    for x, y in seen:
        if ptr + tokens + 1 >= len(ids):
            ptr, wrapped = 0, wrapped + 1
        torch.testing.assert_close(x, ids[ptr:ptr + tokens].view(cfg.batch_size, cfg.block_size), rtol=0, atol=0)
        torch.testing.assert_close(y, ids[ptr + 1:ptr + 1 + tokens].view(cfg.batch_size, cfg.block_size),
                                   rtol=0, atol=0)
        ptr += tokens
    assert wrapped == cfg.epochs - 1             # once per epoch after the first


def test_the_seed_decides_the_run(tiny_data):
    """The same seed gives the same run, bit for bit; another seed another initialisation and
    other dropout masks."""
    cfg, data = tiny_data
    cfg = cfg.replace(epochs=1)
    runs = [train(cfg.replace(seed=seed), data, device="cpu", progress=False, echo=None).curve
            for seed in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0][0][1] != runs[2][0][1] and runs[0][-1][1] != runs[2][-1][1]


def test_train_seed_changes_the_draws_but_not_the_scored_tokens(tiny_data, tmp_path, monkeypatch):
    """train_seed seeds the training (init, dropout); the data and the scoring stay keyed by
    seed. Its default (null) is the seed: the run that seed alone gave before train_seed existed,
    bit for bit (one process, one kernel set): its weights are those of torch.manual_seed(seed)
    then GPT(cfg), as train() drew them before."""
    cfg, data = tiny_data
    cfg = cfg.replace(epochs=1, dropout=0.2)
    built, scored = [], []

    class RecordingGPT(GPT):
        def __init__(self, *args):
            super().__init__(*args)
            built.append({k: v.clone() for k, v in self.state_dict().items()})

    class RecordingScorer(train_mod.Scorer):
        def __init__(self, model, val_ids, cfg, val_chars, *args, **kwargs):
            scored.append((val_ids.clone(), val_chars))
            super().__init__(model, val_ids, cfg, val_chars, *args, **kwargs)

    monkeypatch.setattr(train_mod, "GPT", RecordingGPT)
    monkeypatch.setattr(train_mod, "Scorer", RecordingScorer)
    default = train(cfg, data, device="cpu", progress=False, echo=None)
    explicit = train(cfg.replace(train_seed=cfg.seed), data, device="cpu", progress=False, echo=None)
    other = train(cfg.replace(train_seed=7), data, device="cpu", progress=False, echo=None,
                  log_path=tmp_path / "other.jsonl")
    assert (default.curve, default.train_curve) == (explicit.curve, explicit.train_curve)
    assert other.curve[0][1] != default.curve[0][1] and other.curve[-1][1] != default.curve[-1][1]
    assert other.train_curve[-1][1] != default.train_curve[-1][1]
    torch.manual_seed(cfg.seed)
    before = GPT(cfg, data.vocab_size).state_dict()
    assert all(torch.equal(built[0][k], v) for k, v in before.items())
    assert any(not torch.equal(built[2][k], v) for k, v in before.items())
    assert len(scored) == 3 and all(torch.equal(ids, scored[0][0]) and chars == data.val_chars
                                    for ids, chars in scored)
    hyper = json.loads((tmp_path / "other.jsonl").read_text().splitlines()[0])
    assert hyper["event"] == "hyperparameters_configured"
    assert (hyper["train_seed"], hyper["effective_train_seed"], hyper["robustness_run"]) == (7, 7, True)


def test_training_stream_shorter_than_a_batch(tiny_data):
    cfg, data = tiny_data
    with pytest.raises(ScoringError, match="fewer than one batch"):
        train(cfg.replace(batch_size=10_000), data, device="cpu", progress=False, echo=None)


def test_training_stream_of_exactly_one_batch_of_tokens(tiny_data):
    """One batch needs batch*block + 1 ids (the targets are shifted by one). With one id more
    the run works; with exactly batch*block ids it must be refused as a ScoringError, like a
    shorter stream, not crash inside the loop."""
    cfg, data = tiny_data
    tokens = cfg.batch_size * cfg.block_size
    enough = dataclasses.replace(data, train_ids=data.train_ids[:tokens + 1])
    result = train(cfg, enough, device="cpu", progress=False, echo=None)
    assert result.steps == result.max_steps == 7 and math.isfinite(result.val_loss)
    exact = dataclasses.replace(data, train_ids=data.train_ids[:tokens])
    with pytest.raises(ScoringError):
        train(cfg, exact, device="cpu", progress=False, echo=None)


def test_validation_stream_shorter_than_a_window(tiny_data):
    cfg, data = tiny_data
    with pytest.raises(ScoringError, match="scoring window"):
        train(cfg.replace(eval_batch_size=1000), data, device="cpu", progress=False, echo=None)


# ---------------------------------------------------------------------- the CLI
def test_cli_end_to_end(tmp_path, titles_file):
    config = tmp_path / "tiny.yaml"
    RunConfig.from_dict(TINY).to_yaml(config)
    log = tmp_path / "out" / "run.jsonl"
    proc = subprocess.run(cli("mainrun-train", "--config", str(config), "--dataset", str(titles_file),
                              "--no-progress", "--log", str(log)),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"val_loss=(\d+\.\d+)", last)
    assert m, last
    value = float(m.group(1))
    assert math.isfinite(value) and value > 0
    assert "not comparable" in proc.stdout.lower()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    val = [e for e in events if e["event"] == "validation_step"]
    assert round(val[-1]["loss"], 6) == value
    # --no-progress drops the bars, not the evaluations: one line each, the last one the result
    lines = re.findall(r"^\[ *(\d+)/(\d+)\] validation loss (\d+\.\d+)", proc.stdout, re.M)
    assert len(lines) == len(val) and int(lines[-1][0]) == int(lines[-1][1]) and abs(float(lines[-1][2]) - value) < 1e-4
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("sig, code, sigint_ignored", [
    ("SIGTERM", 143, False),
    ("SIGINT", 130, True),            # started with `&` from a script: SIGINT inherited ignored
])
def test_cli_signal_mid_run_exits_with_a_message(tmp_path, titles_file, sig, code, sigint_ignored):
    import os
    import signal
    import time
    config = tmp_path / "tiny.yaml"
    RunConfig.from_dict({**TINY, "epochs": 50}).to_yaml(config)       # long enough to be stopped
    out = tmp_path / "out.txt"
    with open(out, "w") as sink:
        proc = subprocess.Popen(cli("mainrun-train", "--config", str(config), "--dataset", str(titles_file),
                                    "--no-progress", "--log", str(tmp_path / "run.jsonl")),
                                stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=lambda: signal.signal(
                                    signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.SIG_DFL))
        try:
            deadline = time.time() + 120
            while "validation loss" not in out.read_text():
                assert proc.poll() is None and time.time() < deadline, out.read_text()[-3000:]
                time.sleep(0.1)
            proc.send_signal(getattr(signal, sig))
            assert proc.wait(timeout=60) == code, out.read_text()[-3000:]
        finally:
            proc.kill()
    text = out.read_text()
    assert f"interrupted ({sig})" in text and "Traceback" not in text, text[-3000:]


def test_cli_diverged_run_exits_1(tmp_path, titles_file, capsys):
    from mainrun.cli import train_main

    config = tmp_path / "tiny.yaml"
    RunConfig.from_dict(TINY).to_yaml(config)
    code = train_main(["--config", str(config), "--dataset", str(titles_file), "--no-progress",
                       "--log", str(tmp_path / "run.jsonl"), "--device", "cpu", "--set", "lr=1e30"])
    assert code == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "val_loss=nan"


# How much farther from the exact trajectory the fast step may end than the plain fp32 loop does.
# Both are fp32 roundings of one computation, so their distances from the fp64 run are of the
# same order (measured here: 0.96 to 1.34 under the default, AVX2 and AVX-512 kernels); a mistake in
# the step (clipping skipped, lr one step late, weight decay or momentum dropped) puts the fast
# run 10^2 to 10^5 times farther off than rounding does.
ROUNDING_FACTOR = 4.0
FP32_EPS = torch.finfo(torch.float32).eps


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_fast_step_agrees_with_a_plain_loop(tiny_data, optimizer):
    """The fast path's step (static buffers, fused optimizer, lr in a device tensor, foreach
    clipping; on CUDA it is what gets captured) against a plain eager loop written out here:
    non-fused optimizer with a float lr driven by LambdaLR, clipping over model.parameters().

    The tolerance is what fp32 rounding does over these 20 steps, measured in the test itself:
    the plain loop runs twice, in fp32 and in fp64 (the exact trajectory, to fp32's eyes). Each
    tensor of the fast run must end no farther from the fp64 one than ROUNDING_FACTOR times the
    plain fp32 run's distance, relative to how far the tensor moved. A fixed atol cannot work:
    the attention's key bias has no true gradient (softmax ignores a shift of the scores), so
    AdamW turns its rounding noise into lr-sized steps whose size depends on the CPU's kernels."""
    cfg = RunConfig.from_dict({**TINY, "dropout": 0.0, "optimizer": optimizer, "momentum": 0.9,
                               "schedule": "warmup_cosine", "warmup_steps": 5, "lr": 3e-3,
                               "weight_decay": 0.1, "beta2": 0.95})
    _, data = tiny_data
    ids = torch.as_tensor(data.train_ids, dtype=torch.long)
    steps, tokens = 20, cfg.batch_size * cfg.block_size

    def batches():
        for s in range(steps):
            chunk = ids[s * tokens:s * tokens + tokens + 1]
            yield chunk[:-1].view(cfg.batch_size, cfg.block_size), chunk[1:].view(cfg.batch_size, cfg.block_size)

    torch.manual_seed(0)
    fast_model = GPT(cfg, data.vocab_size)
    start = {name: p.detach().double().clone() for name, p in fast_model.named_parameters()}

    def plain_loop(dtype: torch.dtype) -> tuple[GPT, list[float]]:
        model = GPT(cfg, data.vocab_size)
        model.load_state_dict(fast_model.state_dict())
        model.to(dtype)
        if optimizer == "adamw":
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                    eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=False)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay, foreach=False)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps))
        losses = []
        for x, y in batches():
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
        return model, losses

    plain_model, plain_losses = plain_loop(torch.float32)
    exact_model, exact_losses = plain_loop(torch.float64)

    opt = train_mod.make_optimizer(cfg, fast_model, torch.device("cpu"))
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    step = train_mod.TrainStep(fast_model, opt, cfg, torch.device("cpu"), "fp32")
    fast_losses = []
    for i, (x, y) in enumerate(batches()):
        train_mod.set_lr(opt, cfg.lr * lr_factor(cfg, i, steps))
        fast_losses.append(step(x, y).item())

    def loss_error(losses: list[float]) -> float:
        return max(abs(a - b) for a, b in zip(losses, exact_losses))
    floor = 4 * FP32_EPS * max(exact_losses)
    assert loss_error(fast_losses) <= ROUNDING_FACTOR * loss_error(plain_losses) + floor, \
        (fast_losses, plain_losses, exact_losses)

    for (name, fast), plain, exact in zip(fast_model.named_parameters(), plain_model.parameters(),
                                          exact_model.parameters()):
        moved = (exact - start[name]).norm()

        def error(p: torch.Tensor) -> float:
            return ((p.double() - exact).norm() / moved).item()
        allowed = ROUNDING_FACTOR * error(plain) + 4 * FP32_EPS
        assert error(fast) <= allowed, f"{name}: {error(fast):.2e} from the fp64 run, rounding allows {allowed:.2e}"


# ---------------------------------------------------------------------- gradient accumulation
# fp32's unit roundoff is u = 2**-24. Accumulation computes the same sums in another order: the
# weight gradients add four 64-token partial sums instead of one 256-token GEMM, and a sum of n
# terms reordered moves by at most n*u of the sum of their magnitudes (Higham's gamma_n). The
# longest such sum here has n = k * b * T = 256 tokens: 256 * u = 1.5e-5, relative. What the
# runs below reach is ~1e-7; a wrong divisor or a clip per micro-batch is off by far more.
K, B, T = 4, 2, 32
ROUNDING = K * B * T * 2.0 ** -24


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_accumulated_micro_batches_step_like_one_batch(tiny_data, grad_clip):
    """K micro-batches of B sequences, accumulated, against one batch of K*B: the same mean loss
    and the same weights after every update, clipping (of the mean gradient) included; and a
    last, shorter group of 2 micro-batches against one batch of 2*B."""
    _, data = tiny_data
    big = tiny(dropout=0.0, batch_size=K * B, momentum=0.9, lr=0.05, grad_clip=grad_clip)
    small = big.replace(batch_size=B, grad_accum_steps=K)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    one, accumulated = GPT(big, data.vocab_size), GPT(big, data.vocab_size)
    accumulated.load_state_dict(one.state_dict())
    one_opt = train_mod.make_optimizer(big, one, cpu)
    one_step = train_mod.TrainStep(one, one_opt, big, cpu, "fp32")
    micro_step = train_mod.TrainStep(accumulated, train_mod.make_optimizer(small, accumulated, cpu), small, cpu, "fp32")
    ids = torch.as_tensor(data.train_ids, dtype=torch.long)

    def check(x, y, step, micro_batches):
        loss = step(x, y).item()
        micro = [micro_step(x[j * B:(j + 1) * B], y[j * B:(j + 1) * B], update=j == micro_batches - 1).item()
                 for j in range(micro_batches)]
        assert math.fsum(micro) / micro_batches == pytest.approx(loss, rel=ROUNDING)
        for (name, a), b in zip(one.named_parameters(), accumulated.parameters()):
            assert (a - b).abs().max() <= ROUNDING * a.abs().max(), name

    for update in range(8):
        chunk = ids[update * K * B * T:(update + 1) * K * B * T + 1]
        check(chunk[:-1].view(K * B, T), chunk[1:].view(K * B, T), one_step, K)
    assert micro_step.pending == 0
    chunk = ids[-2 * B * T - 1:]
    short = train_mod.TrainStep(one, one_opt, big.replace(batch_size=2 * B), cpu, "fp32")
    check(chunk[:-1].view(2 * B, T), chunk[1:].view(2 * B, T), short, 2)


def test_an_accumulating_run_trains_like_the_larger_batch_and_evaluates_at_the_same_positions(tiny_data):
    """A whole run: B-sequence micro-batches accumulated K at a time against batches of K*B,
    on a stream whose epochs hold whole groups, with a schedule (which counts updates). The
    accumulating run evaluates where a B-sequence run without accumulation would (Mainrun's
    cadence, in micro-batches); there, after whole updates, it scores what the K*B run scores
    at the same position in the data. Its first evaluation, before any update, scores the init."""
    cfg, data = tiny_data
    stream = dataclasses.replace(data, train_ids=data.train_ids[:9 * K * B * T + 2])   # 9 updates per epoch
    common = cfg.replace(dropout=0.0, epochs=2, grad_clip=0.0, lr=0.05, schedule="warmup_cosine", warmup_steps=3,
                         min_lr_frac=0.1)
    one = train(common.replace(batch_size=K * B), stream, device="cpu", progress=False, echo=None)
    small = common.replace(batch_size=B, grad_accum_steps=K)
    accumulated = train(small, stream, device="cpu", progress=False, echo=None)
    assert [s for s, _ in accumulated.curve] == eval_steps(small.replace(grad_accum_steps=1), 9 * K)
    assert accumulated.max_steps == K * one.max_steps and accumulated.optimizer_steps == one.optimizer_steps == 18
    assert [s for s, _ in accumulated.curve[1:]] == [K * s for s, _ in one.curve[1:]]
    assert [v for _, v in accumulated.curve[1:]] == pytest.approx([v for _, v in one.curve[1:]], rel=ROUNDING)
    assert one.curve[-1][1] < 0.97 * accumulated.curve[0][1]           # they learned, so the match means something
    torch.manual_seed(cfg.seed)
    init = GPT(small, data.vocab_size)
    assert accumulated.curve[0][1] == pytest.approx(
        evaluate(init, torch.as_tensor(data.val_ids), small, data.val_chars), rel=SCORING_RTOL)


def test_the_schedule_counts_updates_and_a_shorter_last_group_is_applied(tiny_data, monkeypatch):
    """With 3 micro-batches per update over 32 steps: 11 updates, the last on 2 micro-batches
    (before the final evaluation), each at cfg.lr * lr_factor(update, 11)."""
    cfg, data = tiny_data
    cfg = cfg.replace(schedule="linear", warmup_steps=2, epochs=1, grad_accum_steps=3)
    result, used = train_recording_the_lr_of_each_update(cfg, data, monkeypatch)
    assert result.max_steps == 32 and result.optimizer_steps == 11
    assert used == pytest.approx([cfg.lr * lr_factor(cfg, u, 11) for u in range(11)])
    assert [s for s, _ in result.lr_curve] == [s for s, _ in result.train_curve]
    assert [lr for _, lr in result.lr_curve] == [cfg.lr * lr_factor(cfg, (s - 1) // 3, 11) for s, _ in result.lr_curve]


def test_wsd_schedule_warms_up_holds_then_decays():
    cfg = RunConfig.from_dict({"schedule": "wsd", "warmup_steps": 10, "decay_frac": 0.2, "min_lr_frac": 0.1})
    steps = 110                                        # 10 warm-up, then 100: stable for 80, decay over 20
    assert lr_factor(cfg, 9, steps) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, steps) == pytest.approx(1.0)
    assert lr_factor(cfg, 89, steps) == pytest.approx(1.0)
    assert lr_factor(cfg, 100, steps) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 109, steps) == pytest.approx(0.1 + 0.9 * 0.05)


# ---------------------------------------------------------------------- muon
def test_a_muon_run_learns_and_moves_every_parameter(tiny_data):
    cfg, data = tiny_data
    cfg = cfg.replace(optimizer="muon", lr=3e-3, weight_decay=0.01, schedule="warmup_cosine", warmup_steps=10)
    result = train(cfg, data, device="cpu", progress=False, echo=None)
    assert result.diverged is None and result.steps == result.max_steps
    assert result.curve[-1][1] < 0.75 * result.curve[0][1]             # it learned, clearly
    model = GPT(cfg, data.vocab_size)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    step = train_mod.TrainStep(model, train_mod.make_optimizer(cfg, model, torch.device("cpu")), cfg,
                               torch.device("cpu"), "fp32")
    ids = torch.as_tensor(data.train_ids[:cfg.batch_size * cfg.block_size + 1], dtype=torch.long)
    step(ids[:-1].view(cfg.batch_size, cfg.block_size), ids[1:].view(cfg.batch_size, cfg.block_size))
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert sorted(moved) == sorted(before)


# ---------------------------------------------------------------------- torch.compile
def test_compile_auto_is_regional_on_cuda_only_and_an_explicit_mode_is_kept():
    """The default: regional compilation won on the H100 (docs/performance.md); on CPU it is
    untimed, so CPU runs, and these tests, stay eager unless a config asks."""
    auto = RunConfig()
    assert auto.compile == "auto"
    assert resolve_compile(auto, torch.device("cuda")) == "regional"
    assert resolve_compile(auto, torch.device("cpu")) == "none"
    for mode in ("none", "regional", "model"):
        assert resolve_compile(RunConfig(compile=mode), torch.device("cuda")) == mode


def test_compile_auto_runs_uncompiled_on_a_machine_without_a_c_compiler(tmp_path, monkeypatch):
    """Triton builds its kernel launchers with $CC, gcc or clang: without one (a runtime-only
    container image) every compiled trial would fail at its first step, so auto does not compile."""
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))                   # an empty folder: no gcc, no clang
    assert "no C compiler ($CC, gcc or clang)" in train_mod.cuda_compile_blocker()
    said: list[str] = []
    assert resolve_compile(RunConfig(), torch.device("cuda"), said.append) == "none"
    assert said == [f"compile: auto runs uncompiled here: {train_mod.cuda_compile_blocker()}"]
    with pytest.raises(train_mod.DeviceError, match="compile: regional cannot run here: no C compiler"):
        resolve_compile(RunConfig(compile="regional"), torch.device("cuda"))
    assert resolve_compile(RunConfig(compile="none"), torch.device("cuda")) == "none"
    monkeypatch.setenv("CC", "/usr/bin/cc")                    # what Triton takes first
    assert train_mod.cuda_compile_blocker() is None
    assert resolve_compile(RunConfig(), torch.device("cuda")) == "regional"


@pytest.fixture
def fresh_compile_state(monkeypatch):
    """As in a new process: no compiled code kept from an earlier test's runs (compile_model)."""
    import mainrun.train as train_mod
    torch.compiler.reset()
    monkeypatch.setattr(train_mod, "_compiled_runs", 0)


def test_a_compiled_run_matches_eager_and_a_recompile_loads_from_the_cache(tiny_data, tmp_path, monkeypatch,
                                                                            fresh_compile_state):
    """Regional compilation (each block, and the loss) of a real run on the CPU, evaluation
    included: the same curve as eager, up to the reordering of floating-point sums, with two
    graphs (block and loss, for training: scoring runs eagerly) and no graph break. A second trial
    of the same shape in the same process (a search worker's next trial) is not even traced
    again, and one in a fresh compile context (another worker) loads inductor's graphs from disk."""
    from torch._dynamo.utils import counters
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg, data = tiny_data
    cfg = cfg.replace(n_layer=2, epochs=1, dropout=0.0, optimizer="adamw", lr=3e-3)
    said: list[str] = []
    eager = train(cfg, data, device="cpu", progress=False, echo=said.append)
    assert not [line for line in said if line.startswith("setup")]
    counters.clear()
    compiled = train(cfg.replace(compile="regional"), data, device="cpu", progress=False, echo=said.append)
    assert "setup before step 1: torch.compile (regional); slowest the first time" in said[-len(compiled.curve) - 1]
    assert [s for s, _ in compiled.curve] == [s for s, _ in eager.curve]
    # Inductor reorders sums; over this one-epoch run that moves the curve by at most what a
    # reordered scoring sum can (measured: 3e-8 relative under the default, AVX2 and AVX-512 kernels)
    assert [v for _, v in compiled.curve] == pytest.approx([v for _, v in eager.curve], rel=SCORING_RTOL)
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    assert counters["inductor"]["fxgraph_cache_miss"] > 0 and any((tmp_path / "inductor").iterdir())
    counters.clear()
    kept = train(cfg.replace(compile="regional"), data, device="cpu", progress=False, echo=None)
    assert counters["stats"]["unique_graphs"] == 0 and not counters["inductor"]    # nothing traced or loaded
    assert kept.curve == compiled.curve
    torch.compiler.reset()                              # another worker: a fresh compile state
    counters.clear()
    again = train(cfg.replace(compile="regional"), data, device="cpu", progress=False, echo=None)
    assert counters["inductor"]["fxgraph_cache_hit"] > 0 and counters["inductor"]["fxgraph_cache_miss"] == 0
    assert again.curve == compiled.curve                # the same compiled code


def test_a_worker_keeps_the_shapes_it_compiled_and_each_run_gets_the_values_of_a_fresh_process(
        tiny_data, tmp_path, monkeypatch, fresh_compile_state):
    """A search worker trains one architecture after another in one process. A shape it trained
    before is not traced again; every run still gets exactly the values it gets in a fresh process
    (static graphs, never a dynamic-shape recompile, never the eager fallback past dynamo's
    recompile limit); and the kept code is dropped every KEEP_COMPILED_RUNS runs."""
    from torch._dynamo.utils import counters

    import mainrun.train as train_mod
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg, data = tiny_data
    cfg = cfg.replace(n_layer=1, epochs=1, dropout=0.0, optimizer="adamw", lr=3e-3, compile="regional")
    widths = (32, 48, 32, 64)
    fresh = []
    for width in widths:
        torch.compiler.reset()
        fresh.append(train(cfg.replace(d_model=width), data, device="cpu", progress=False, echo=None).curve)
    torch.compiler.reset()
    train_mod._compiled_runs = 0                        # (the fixture restores it)
    monkeypatch.setattr(train_mod, "KEEP_COMPILED_RUNS", 3)
    traced = []
    # config.patch, not monkeypatch: monkeypatch's undo deletes a torch config attribute, which
    # breaks every later compile in the process. A limit of 1 would fail the second width, unless
    # compile_model raises it above what KEEP_COMPILED_RUNS runs can add.
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        for width, expected in zip(widths, fresh, strict=True):
            counters.clear()
            result = train(cfg.replace(d_model=width), data, device="cpu", progress=False, echo=None)
            assert result.curve == expected
            assert result.traced_graphs == counters["stats"]["unique_graphs"]     # recorded by the trial
            traced.append(result.traced_graphs)
    assert traced[0] > 0 and traced[1] > 0 and traced[2] == 0          # width 32 again: kept
    assert traced[3] > 0 and train_mod._compiled_runs == 1              # the fourth run started afresh


def test_a_new_dropout_value_of_a_compiled_shape_loads_its_graphs_from_the_cache(tiny_data, tmp_path, monkeypatch,
                                                                                 fresh_compile_state):
    """Dropout's rate is a run-time input of the compiled graphs, not a constant baked into them:
    in a search that samples dropout, a trial of a shape seen before loads inductor's graphs from
    disk whatever its rate, instead of compiling cold. Attention runs uncompiled between the two
    graphs of a block (SDPA takes its dropout as a float only: model.attention_with_dropout)."""
    from torch._dynamo.utils import counters
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg, data = tiny_data
    cfg = cfg.replace(n_layer=2, epochs=1, optimizer="adamw", lr=3e-3, compile="regional")
    counters.clear()
    first = train(cfg.replace(dropout=0.5), data, device="cpu", progress=False, echo=None)
    assert counters["inductor"]["fxgraph_cache_miss"] > 0                 # a cold cache
    assert counters["stats"]["unique_graphs"] == 3                        # the block around attention, the loss
    torch.compiler.reset()                                                # another worker
    counters.clear()
    second = train(cfg.replace(dropout=0.2), data, device="cpu", progress=False, echo=None)
    assert counters["inductor"]["fxgraph_cache_hit"] > 0 and counters["inductor"]["fxgraph_cache_miss"] == 0
    assert counters["aot_autograd"]["autograd_cache_hit"] > 0 and counters["aot_autograd"]["autograd_cache_miss"] == 0
    # the graphs loaded read the new rate: same seed, same stream of random numbers, another run
    assert math.isfinite(second.val_loss) and second.curve != first.curve
    counters.clear()                                                      # the same worker's next trial
    third = train(cfg.replace(dropout=0.3), data, device="cpu", progress=False, echo=None)
    assert counters["stats"]["unique_graphs"] == 0 and third.curve not in (first.curve, second.curve)
    # and it drops at all: without dropout a compiled run is the eager run up to SCORING_RTOL (above)
    plain = train(cfg.replace(dropout=0.0, compile="none"), data, device="cpu", progress=False, echo=None)
    assert plain.traced_graphs is None and (first.traced_graphs, third.traced_graphs) == (3, 0)
    assert [v for _, v in first.curve] != pytest.approx([v for _, v in plain.curve], rel=SCORING_RTOL)


class NnDropoutGPT(GPT):
    """The baseline GPT as it was before dropout's rate became a tensor: nn.Dropout's F.dropout
    and SDPA's dropout_p with the config's float, in the same order, on the same weights."""

    def __init__(self, cfg: RunConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.p = cfg.dropout

    def forward(self, idx, targets=None, reduction="mean"):
        p, training = self.p, self.training
        x = F.dropout(self.token_emb(idx) + self.pos_emb[:, :idx.size(1), :], p, training)
        for block in self.blocks:
            attn, mlp = block.attn, block.mlp
            B, T, C = x.size()
            q, k, v = attn.qkv(block.ln1(x)).view(B, T, 3, attn.n_head, attn.head_dim).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p if training else 0.0)
            x = x + F.dropout(attn.proj(y.transpose(1, 2).reshape(B, T, C)), p, training)
            x = x + F.dropout(mlp.down(F.gelu(mlp.up(block.ln2(x)))), p, training)
        logits = self.head(self.ln_f(x))
        return logits, None if targets is None else self.loss(logits, targets, reduction)


def test_an_eager_run_draws_the_dropout_masks_it_always_did(tiny_data, monkeypatch):
    """Uncompiled runs (the CPU default, and checked-in configs with compile: none) keep their
    values bit for bit: the same random draws from the same generator, in the same order."""
    cfg, data = tiny_data
    cfg = cfg.replace(n_layer=2, epochs=1, dropout=0.3, optimizer="adamw", lr=3e-3, compile="none")
    run = train(cfg, data, device="cpu", progress=False, echo=None)
    monkeypatch.setattr(train_mod, "GPT", NnDropoutGPT)
    before = train(cfg, data, device="cpu", progress=False, echo=None)
    assert run.curve == before.curve and run.train_curve == before.train_curve
    assert before.curve != train(cfg.replace(dropout=0.1), data, device="cpu", progress=False, echo=None).curve


def test_whole_step_capture_only_where_it_was_verified_on_a_gpu():
    assert train_mod.capture_verified(tiny(optimizer="adamw"))
    assert train_mod.capture_verified(tiny(optimizer="sgd", momentum=0.0))           # the baseline
    assert not train_mod.capture_verified(tiny(optimizer="sgd", momentum=0.9))
    assert not train_mod.capture_verified(tiny(optimizer="muon"))
    assert not train_mod.capture_verified(tiny(optimizer="adamw", grad_accum_steps=2))    # accumulation: eager
