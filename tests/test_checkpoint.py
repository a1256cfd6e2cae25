"""Checkpoints (mainrun/checkpoint.py): a run stopped part-way and resumed ends where an
uninterrupted run ends, bit for bit (same process, same kernels); a checkpoint that is missing,
truncated or made by another run is refused and says why; a search's retry of a lost trial
resumes from its predecessor's checkpoint; mainrun-train --checkpoint-dir / --resume.

Runs are stopped the way Ctrl-C or SIGTERM stops them: a real SIGTERM, sent from inside a
training step's forward pass, so that it lands mid-step and the save happens at that step's end.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from helpers import TINY, cli, make_titles
from mainrun.checkpoint import (CHECKPOINT_SHARE, RUN_FILE, CheckpointError, Checkpointer, TrialCheckpoints,
                                atomic_save, fingerprint, load)
from mainrun.config import RunConfig
from mainrun.data import prepare_data
from mainrun.model import GPT
from mainrun.train import eval_steps, steps_per_epoch, train

CPU = torch.device("cpu")
# Two epochs of the tiny corpus: 64 steps, evaluations at 1, 10, 20, ..., 60, 64.
SHORT = {**TINY, "epochs": 2}
STOP = 35          # not an evaluation, 3 steps past a read of the loss buffer (32), mid-group for k = 2 or 3


def config(data_file, **changes) -> RunConfig:
    return RunConfig.from_dict({**SHORT, "dataset": str(data_file), **changes})


@pytest.fixture(scope="module")
def titles(tmp_path_factory):
    base = tmp_path_factory.mktemp("ckpt_data")
    path = base / "titles.txt"
    path.write_text("\n".join(make_titles(1500)) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(base / "hf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        data = prepare_data(config(path), base / "cache", log=lambda _m: None)
    return path, data


@contextlib.contextmanager
def training_forwards(sigterm_at: int | None = None):
    """Counts the training forward passes of GPT models (the steps a run trains); with sigterm_at,
    sends this process a SIGTERM from inside that step's forward pass."""
    count = [0]

    def hook(module, _args):
        if isinstance(module, GPT) and module.training:
            count[0] += 1
            if count[0] == sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def stopped_run(cfg, data, path, at: int = STOP, share=None) -> Checkpointer:
    """Train `cfg` until a SIGTERM inside step `at` stops it; its checkpoint is left at `path`."""
    ck = Checkpointer(path, fingerprint(cfg, data, CPU), share=share)
    with training_forwards(sigterm_at=at), ck.interrupts_deferred(), pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        train(cfg, data, device="cpu", progress=False, echo=None, checkpoint=ck)
    return ck


# ---------------------------------------------------------------------- a run, stopped and resumed
@pytest.mark.parametrize("changes", [
    {},                                                                # the baseline's SGD, no dropout
    {"optimizer": "adamw", "dropout": 0.1},                            # dropout: the RNG streams
    {"optimizer": "muon", "dropout": 0.1, "grad_accum_steps": 3},      # both halves; a group cut mid-way
], ids=["sgd", "adamw-dropout", "muon-dropout-accum3"])
def test_a_run_stopped_by_sigterm_resumes_bit_for_bit(titles, tmp_path, changes):
    path, data = titles
    cfg = config(path, **changes)
    full = train(cfg, data, device="cpu", progress=False, echo=None)

    ck = stopped_run(cfg, data, tmp_path / "run.pt")                   # saves at every evaluation, then at STOP
    saved = [s for s in eval_steps(cfg, steps_per_epoch(cfg, len(data.train_ids))) if 1 < s < STOP]
    assert len(ck.saves) == len(saved) + 1 and all(size > 0 for _, size in ck.saves)
    state = load(tmp_path / "run.pt", fingerprint(cfg, data, CPU))
    assert (state["step"], state["flushed"], state["eval_index"]) == (STOP, 32, 1 + len(saved))
    assert state["pending"] == STOP % cfg.grad_accum_steps             # the accumulated gradients came along
    assert [s for s, _ in state["curve"]] == [1, *saved]

    resume = Checkpointer(tmp_path / "run.pt", fingerprint(cfg, data, CPU), resume=state, share=None)
    with training_forwards() as steps:
        resumed = train(cfg, data, device="cpu", progress=False, echo=None, checkpoint=resume)
    assert steps[0] == full.max_steps - STOP                           # only the remaining steps trained
    assert resumed.val_loss == full.val_loss                           # same process, same kernels: exact
    assert resumed.curve == full.curve
    assert resumed.train_curve == full.train_curve and resumed.lr_curve == full.lr_curve
    assert resumed.steps == full.steps and not resumed.stopped_early


def test_a_checkpoint_is_refused_when_missing_truncated_or_made_by_another_run(titles, tmp_path):
    path, data = titles
    cfg = config(path, epochs=1)
    stopped_run(cfg, data, tmp_path / "run.pt", at=12)
    wanted = fingerprint(cfg, data, CPU)
    assert load(tmp_path / "run.pt", wanted)["step"] == 12

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load(tmp_path / "none.pt", wanted)
    blob = (tmp_path / "run.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[:len(blob) // 2])
    with pytest.raises(CheckpointError, match="unreadable, truncated or not a mainrun checkpoint"):
        load(tmp_path / "cut.pt", wanted)
    (tmp_path / "other.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load(tmp_path / "other.pt", wanted)

    other_lr = fingerprint(cfg.replace(lr=cfg.lr * 2), data, CPU)
    with pytest.raises(CheckpointError, match=re.escape(f"another config (lr {cfg.lr!r} there, {cfg.lr * 2!r} here)")):
        load(tmp_path / "run.pt", other_lr)
    for key, value, said in (("code", "0" * 16, "another mainrun code"), ("mainrun", "9.9", "another mainrun code"),
                             ("torch", "1.0", "another torch"), ("data", "f" * 16, "another dataset or tokenizer"),
                             ("device", "cuda", "another device type")):
        with pytest.raises(CheckpointError, match=re.escape(said)):
            load(tmp_path / "run.pt", {**wanted, key: value})
    # the token ids themselves count, not only the dataset's name
    shifted = prepare_data(cfg.replace(seed=cfg.seed + 1), tmp_path / "cache", log=lambda _m: None)
    assert fingerprint(cfg, shifted, CPU)["data"] != wanted["data"]


def test_a_save_is_atomic(tmp_path, monkeypatch):
    """A crash while a checkpoint is written leaves the previous checkpoint whole, and no temporary file."""
    path = tmp_path / "run.pt"
    atomic_save({"format": 1, "step": 3}, path)
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"format": 1, "step": 9}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]


def test_the_default_cadence_saves_while_saves_stay_within_their_share(tmp_path):
    """Not timed: the rule, on given durations. A save is expected to take what the last one took,
    and before the first one the state's bytes at SAVE_BYTES_PER_SECOND."""
    from mainrun.checkpoint import SAVE_BYTES_PER_SECOND
    ck = Checkpointer(tmp_path / "run.pt", {}, share=CHECKPOINT_SHARE)
    model = torch.nn.Linear(1024, 1024)                           # 4 MiB of weights (and bias)
    ck._run = (model, torch.optim.SGD(model.parameters()), None, torch.zeros(256), None, 0.0)
    first = ck._state_bytes() / SAVE_BYTES_PER_SECOND
    assert ck._state_bytes() == 4 * (1024 * 1024 + 1024 + 256)
    ck._started = time.perf_counter() - 0.5 * first / CHECKPOINT_SHARE
    assert not ck._due()                                 # too early for even the first save
    ck._started = time.perf_counter() - 2 * first / CHECKPOINT_SHARE
    assert ck._due()
    ck.saves = [(0.1, 1000)]                             # 0.1 s so far, and the next one like it: 0.2 s
    ck._started = time.perf_counter() - 5.0              # 2% of 5 s is 0.1 s: not yet
    assert not ck._due()
    ck._started = time.perf_counter() - 11.0             # 2% of 11 s is 0.22 s: due
    assert ck._due()
    assert Checkpointer(tmp_path / "run.pt", {}, share=None)._due()


# ---------------------------------------------------------------------- a search's lost trial
@pytest.fixture
def lost_trial(titles, tmp_path):
    """A study on a heartbeat storage and its `lose(trial)`: the trial's worker dies (its heartbeat
    stops), Optuna fails it and enqueues the retry a worker picks up next."""
    from mainrun.search.workers import WorkerContext
    from mainrun.storage import StorageSettings, open_storage
    settings = StorageSettings(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1, heartbeat_grace=1)
    storage = open_storage(settings)
    study = optuna.create_study(study_name="lost", storage=storage)
    ctx = WorkerContext(objective=None, storage=settings, study_name="lost", trials=1, device="cpu",
                        artifacts=str(tmp_path / "artifacts"), worker=0, start_time=time.time(), finished_at_start=0,
                        checkpoints=str(tmp_path / "checkpoints"))
    (tmp_path / "artifacts").mkdir()

    def lose(trial: optuna.Trial) -> None:
        storage.record_heartbeat(trial._trial_id)
        time.sleep(2.5)                                       # past the grace
        optuna.storages.fail_stale_trials(study)
    return study, ctx, lose


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")        # the first attempt is asked for by hand
def test_a_retry_resumes_from_its_lost_predecessors_checkpoint(titles, lost_trial, tmp_path, capsys):
    from mainrun.search.objective import TrialRunner
    path, data = titles
    cfg = config(path, optimizer="adamw", dropout=0.1, grad_accum_steps=2)
    full = train(cfg, data, device="cpu", progress=False, echo=None)
    study, ctx, lose = lost_trial
    runner = TrialRunner(data, ctx)

    # the first attempt reports its evaluations and saves checkpoints; its worker dies at STOP
    first = study.ask()
    ck = runner.checkpoints.for_trial(first, cfg, data, CPU)
    ck.share = None
    with training_forwards(sigterm_at=STOP), ck.interrupts_deferred(), pytest.raises(KeyboardInterrupt):
        train(cfg, data, device="cpu", progress=False, echo=None, checkpoint=ck,
              on_eval=lambda i, _step, value: first.report(value, i))
    assert ck.path.is_file()
    lose(first)

    with training_forwards() as steps:
        study.optimize(lambda trial: runner(trial, cfg), n_trials=1)
    retry = study.trials[-1]
    assert study.trials[first.number].state == TrialState.FAIL
    assert retry.system_attrs["retry_history"] == [first.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_step"] == STOP
    assert steps[0] == full.max_steps - STOP                          # only the remaining steps
    assert retry.value == full.val_loss                               # bit for bit
    assert retry.intermediate_values == {i: v for i, (_, v) in enumerate(full.curve)}   # the whole curve
    assert f"resumes from step {STOP}" in capsys.readouterr().out
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))          # finished: nothing left to resume


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize("damage, said", [
    ("missing", "no checkpoint at"),
    ("truncated", "unreadable, truncated"),
    ("other-config", "another config (lr"),
])
def test_a_retry_with_an_unusable_checkpoint_starts_over(titles, lost_trial, tmp_path, capsys, damage, said):
    from mainrun.search.objective import TrialRunner
    path, data = titles
    cfg = config(path, epochs=1)
    study, ctx, lose = lost_trial
    runner = TrialRunner(data, ctx)
    first = study.ask()
    where = runner.checkpoints.path("lost", first.number)
    if damage != "missing":
        stopped_run(cfg.replace(lr=cfg.lr / 2) if damage == "other-config" else cfg, data, where, at=12)
    if damage == "truncated":
        where.write_bytes(where.read_bytes()[:1000])
    lose(first)
    with training_forwards() as steps:
        study.optimize(lambda trial: runner(trial, cfg), n_trials=1)
    retry = study.trials[-1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_step"] == 0
    assert said in retry.user_attrs["resume_note"]
    assert steps[0] == retry.user_attrs["max_steps"]                 # trained from step 0
    assert retry.value == train(cfg, data, device="cpu", progress=False, echo=None).val_loss
    line = next(line for line in capsys.readouterr().out.splitlines() if "starts from step 0" in line)
    assert said in line and "\n" not in line.strip()


def test_a_lost_trial_is_retried_until_max_retry_attempts_made_no_progress(tmp_path):
    """RetryLostTrials: an attempt that saved a checkpoint past where it started does not count
    against MAX_RETRY; one lost before saving anything new does."""
    from mainrun.storage import MAX_RETRY, RetryLostTrials
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="r")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, params={"x": 0.5}, distributions=dist))
    retry = RetryLostTrials()
    progress = [None, None, 8, None, None]     # per attempt: the step it saved to past its start; None: nothing
    for number, _ in enumerate(progress):
        retry(study, study.get_trials(deepcopy=False)[number])
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        stuck = sum(p is None for p in progress[:number + 1])
        assert bool(waiting) == (stuck <= MAX_RETRY), (number, stuck)
        if not waiting:
            break
        trial = study.ask()                                    # the retry, with the lost trial's user attrs
        assert trial.number == number + 1 and trial.params == {"x": 0.5}
        trial.set_user_attr("resumed_from_step", trial.user_attrs.get("checkpoint_step", 0))
        if progress[number + 1] is not None:
            trial.set_user_attr("checkpoint_step", progress[number + 1])
        study.tell(trial, state=TrialState.FAIL)
    assert MAX_RETRY == 3 and number == 4 and len(study.trials) == 5     # the 4th stuck attempt is not retried


def test_the_sweep_keeps_only_checkpoints_a_retry_can_use(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def add(state, **system_attrs):
        study.add_trial(optuna.create_trial(state=state, params={"x": 0.5}, distributions=dist,
                                            value=1.0 if state == TrialState.COMPLETE else None,
                                            system_attrs=system_attrs))
    add(TrialState.COMPLETE)                                           # 0: finished
    study.ask()                                                        # 1: running (its worker may be dead)
    add(TrialState.FAIL)                                               # 2: lost, its retry waits
    add(TrialState.WAITING, failed_trial=2, retry_history=[2])         # 3: that retry
    add(TrialState.FAIL)                                               # 4: lost, no retry left
    store = TrialCheckpoints(tmp_path / "checkpoints")
    for number in (0, 1, 2, 4, 99):                                    # 99: no such trial (another database's)
        atomic_save({"step": number}, store.path("s", number))
    assert store.sweep(study) == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "s").iterdir()) == \
        ["trial-1.pt", "trial-2.pt", "trial-99.pt"]


def test_a_study_name_that_is_not_a_file_name_stays_inside_the_folder(tmp_path):
    store = TrialCheckpoints(tmp_path)
    path = store.path("../up/and away", 3)
    assert path.resolve().parent.parent == tmp_path.resolve() and path.name == "trial-3.pt"
    assert store.path("../up/and away", 3) != store.path("__up_and_away", 3)


# ---------------------------------------------------------------------- mainrun-train --checkpoint-dir
def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mainrun_train_sigterm_leaves_a_checkpoint_and_resume_ends_at_the_uninterrupted_value(tmp_path, titles_file):
    cfg_file = tmp_path / "tiny.yaml"
    RunConfig.from_dict(TINY).to_yaml(cfg_file)
    args = ["--config", str(cfg_file), "--dataset", str(titles_file), "--device", "cpu", "--no-progress"]
    plain = subprocess.run(cli("mainrun-train", *args, "--log", str(tmp_path / "plain.jsonl")),
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]

    ckdir, out = tmp_path / "ck", tmp_path / "out.txt"
    run = [*args, "--log", str(tmp_path / "run.jsonl"), "--checkpoint-dir", str(ckdir)]
    with open(out, "w") as sink:
        proc = subprocess.Popen(cli("mainrun-train", *run), stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.time() + 300
            while not (ckdir / RUN_FILE).exists():                    # the first save: training is under way
                assert proc.poll() is None and time.time() < deadline, out.read_text()[-3000:]
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 143, out.read_text()[-3000:]
        finally:
            proc.kill()
    text = out.read_text()
    m = re.search(r"checkpoint: saved at step (\d+) of (\d+) in .*\(SIGTERM\); --resume continues from it", text)
    assert m and int(m[1]) < int(m[2]), text[-3000:]
    assert "interrupted (SIGTERM)" in text and "Traceback" not in text

    resumed = subprocess.run(cli("mainrun-train", *run, "--resume"), capture_output=True, text=True, timeout=600,
                             cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint: resuming from step {m[1]}" in resumed.stdout
    assert resumed.stdout.splitlines()[-1] == plain.stdout.splitlines()[-1]          # val_loss=...
    want, got = read_log(tmp_path / "plain.jsonl"), read_log(tmp_path / "run.jsonl")  # the resumed run appends
    assert [e["loss"] for e in got if e["event"] == "validation_step"] == \
        [e["loss"] for e in want if e["event"] == "validation_step"]                   # exact, every evaluation
    assert [e["step"] for e in got if e["event"] == "training_step"] == list(range(1, int(m[2]) + 1))
    assert not (ckdir / RUN_FILE).exists()                            # a finished run leaves nothing to resume


def test_mainrun_train_resume_without_a_usable_checkpoint_exits_2(tmp_path, titles_file, capsys):
    from mainrun.cli import train_main
    args = ["--dataset", str(titles_file), "--device", "cpu", "--no-progress", "--log", str(tmp_path / "r.jsonl"),
            *[f"--set={k}={v}" for k, v in SHORT.items()]]
    ckdir = tmp_path / "ck"

    def fails(*extra) -> str:
        with pytest.raises(SystemExit) as info:
            train_main([*args, *extra])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err.strip().splitlines()[-1] if err.startswith("usage:") else err   # else one line: error: ...

    assert "--resume needs --checkpoint-dir" in fails("--resume")               # a usage error
    assert fails("--checkpoint-dir", str(ckdir), "--resume").count("\n") == 1
    assert f"--resume: no checkpoint at {ckdir / RUN_FILE}" in fails("--checkpoint-dir", str(ckdir), "--resume")
    ckdir.mkdir()
    (ckdir / RUN_FILE).write_bytes(b"PK\x03\x04 cut short")
    assert "unreadable, truncated" in fails("--checkpoint-dir", str(ckdir), "--resume")
    # a real checkpoint, of another lr: refused with --resume, and not overwritten without it
    cfg = RunConfig.from_dict({**SHORT, "dataset": str(titles_file), "lr": 0.5})
    data = prepare_data(cfg, log=lambda _m: None)
    stopped_run(cfg, data, ckdir / RUN_FILE, at=5)
    assert "another config (lr 0.5 there" in fails("--checkpoint-dir", str(ckdir), "--resume")
    assert "pass --resume to continue it" in fails("--checkpoint-dir", str(ckdir))
    (tmp_path / "file").write_text("")
    assert "cannot make the folder" in fails("--checkpoint-dir", str(tmp_path / "file" / "ck"))
