"""mainrun-search end to end on the CPU: real SQLite studies, real training runs, the real
optuna-dashboard over HTTP, export -> train."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from helpers import SPACES, cli, make_titles
from mainrun.config import RunConfig

SMOKE = SPACES / "smoke.yaml"


def search(tmp_path: Path, *args: str, space: Path = SMOKE, db: str = "x.db", timeout: int = 300):
    argv = cli("mainrun-search", "--space", str(space), "--storage", f"sqlite:///{tmp_path / db}", *args)
    # explicit, because a module-scoped fixture runs before the autouse cache isolation
    env = {**os.environ, "MAINRUN_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=timeout, env=env)


def load(tmp_path: Path, study: str, db: str = "x.db") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path / db}")


def finished(study: optuna.Study) -> list:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def aggressive_space(tmp_path: Path) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["pruner"] = {"name": "percentile", "percentile": 10.0, "n_startup_trials": 1, "n_warmup_steps": 0}
    path = tmp_path / "aggressive.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """One 6-trial search shared by the read-only checks below."""
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "titles.txt").write_text("\n".join(make_titles(1500)) + "\n")
    proc = search(tmp, "--trials", "6", "--dataset", str(tmp / "titles.txt"), "--study", "s", "--seed", "3",
                  "--tensorboard", str(tmp / "tb"), space=aggressive_space(tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp, proc


def test_search_finishes_with_the_requested_trials_and_prunes(smoke_study):
    tmp, proc = smoke_study
    study = load(tmp, "s")
    assert len(finished(study)) == 6
    assert study.metric_names == ["val_loss"]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE      # a loss: lower is better
    complete_values = [t.value for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert study.best_value == min(complete_values) and len(set(complete_values)) > 1
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "the aggressive pruner should prune at least one trial"
    for t in pruned:
        assert t.user_attrs["prune_reason"].startswith("pruned at evaluation")
        assert max(t.intermediate_values) < 20                     # stopped before the last evaluation
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    for t in complete:
        # step 1, three per epoch for 7 epochs: every evaluation is reported
        assert sorted(t.intermediate_values) == list(range(len(t.intermediate_values)))
        assert len(t.intermediate_values) >= 20
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
    assert "trial" in proc.stdout and "best" in proc.stdout and "ETA" in proc.stdout
    assert "optuna-dashboard" in proc.stdout and "mainrun-export --study s" in proc.stdout


def test_the_search_prints_no_optuna_warnings_or_tracebacks(smoke_study):
    """The search quiets Optuna where it starts (the entry point, each worker): its experimental
    flags on heartbeats and metric names, and the traceback of a trial failure it says in one line."""
    _, proc = smoke_study
    assert "ExperimentalWarning" not in proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    assert "[I " not in proc.stderr                       # optuna's INFO lines ("Trial 3 finished ...")


def test_trials_record_params_attrs_and_artifacts(smoke_study):
    tmp, _ = smoke_study
    study = load(tmp, "s")
    assert study.user_attrs["space_file"].endswith("aggressive.yaml")
    assert study.user_attrs["dataset"].endswith("titles.txt")
    assert len(study.user_attrs["titles_sha256"]) == 64
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp / "artifacts"))
    for t in finished(study):
        attrs = t.user_attrs
        for key in ("n_params", "prep_seconds", "train_seconds", "tokens_per_second",
                    "device", "mainrun_version", "git_commit", "config"):
            assert key in attrs, key
        assert attrs["device"].startswith("cpu")
        assert "peak_memory_mb" not in attrs          # measured on CUDA only: no made-up 0 on the CPU
        assert set(t.params) <= {"optimizer", "lr", "momentum", "d_model", "head_dim", "mlp"}
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        names = sorted(m.filename for m in metas)
        assert names == [f"trial-{t.number}-config.yaml", f"trial-{t.number}-curves.png", f"trial-{t.number}.jsonl"]
        png = next(m for m in metas if m.filename.endswith(".png"))
        assert png.mimetype == "image/png"
        with store.open_reader(png.artifact_id) as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        log_meta = next(m for m in metas if m.filename.endswith(".jsonl"))
        with store.open_reader(log_meta.artifact_id) as f:
            events = [json.loads(line)["event"] for line in f.read().decode().splitlines()]
        assert events[0] == "hyperparameters_configured" and "validation_step" in events


def test_trials_record_their_train_validation_and_lr_curves(smoke_study):
    """Every finished trial keeps the three curves by step: validation at the steps its reported
    evaluations were made (pruned trials end where they stopped), training loss and lr at each
    read of the loss buffer (every 32 steps and at each evaluation)."""
    tmp, _ = smoke_study
    for t in finished(load(tmp, "s")):
        curves = t.user_attrs["curves"]
        assert [v for _, v in curves["val"]] == pytest.approx([t.intermediate_values[i] for i in
                                                               sorted(t.intermediate_values)], rel=1e-5)
        val_steps = [s for s, _ in curves["val"]]
        train_steps = [s for s, _ in curves["train"]]
        assert val_steps[0] == 1 and val_steps[-1] == t.user_attrs["steps"] == train_steps[-1]
        assert set(val_steps) <= set(train_steps) and all(s % 32 == 0 for s in set(train_steps) - set(val_steps))
        assert [s for s, _ in curves["lr"]] == train_steps
        lr = t.user_attrs["config"]["lr"]
        assert all(0 <= v <= lr * (1 + 1e-3) for _, v in curves["lr"]) and curves["lr"][0][1] == pytest.approx(lr, rel=1e-3)
        assert all(v > 0 for _, v in curves["train"])


def test_tensorboard_event_files_hold_each_trials_curves(smoke_study):
    """--tensorboard DIR: one run folder per trial, DIR/STUDY/trial-N, read back with
    TensorBoard's own reader; its val/loss is what the trial reported."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tmp, _ = smoke_study
    study = load(tmp, "s")
    assert sorted(p.name for p in (tmp / "tb" / "s").iterdir()) == sorted(f"trial-{t.number}" for t in study.trials)
    for t in finished(study):
        events = EventAccumulator(str(tmp / "tb" / "s" / f"trial-{t.number}"))
        events.Reload()
        assert {"train/loss", "val/loss", "lr", "tokens/s"} <= set(events.Tags()["scalars"])
        val = events.Scalars("val/loss")
        assert [e.step for e in val] == [s for s, _ in t.user_attrs["curves"]["val"]]
        assert [e.value for e in val] == pytest.approx([v for _, v in t.user_attrs["curves"]["val"]], rel=1e-5)


def test_the_closing_summary_names_the_best_trials_params_at_the_edge_of_the_space(tmp_path, titles_file):
    data = yaml.safe_load(SMOKE.read_text())
    data["enqueue"] = [{"optimizer": "sgd", "lr": 3.0e-2, "momentum": 0.0, "d_model": 32, "head_dim": 8, "mlp": "gelu"}]
    space = tmp_path / "edge.yaml"
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = search(tmp_path, "--trials", "1", "--dataset", str(titles_file), space=space)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout[proc.stdout.index("the best trial (0) is at the edge of the space"):]
    # lr and d_model at the top; head_dim 8 at the bottom; momentum 0 is the field's own bound
    assert summary.splitlines()[1:4] == ["  lr 0.03 is the top of its range: widen it",
                                         "  d_model 32 is the top of its range: widen it",
                                         "  head_dim 8 is the bottom of its range: widen it"]


def test_the_enqueued_trial_runs_first(smoke_study):
    tmp, _ = smoke_study
    first = load(tmp, "s").trials[0]
    assert first.params == {"optimizer": "sgd", "lr": 6e-3, "momentum": 0.0, "d_model": 32, "head_dim": 16,
                            "mlp": "gelu"}


def test_export_then_train_reproduces_the_value_exactly(smoke_study, tmp_path):
    tmp, _ = smoke_study
    out = tmp_path / "best.yaml"
    proc = subprocess.run(cli("mainrun-export", "--study", "s", "--storage", f"sqlite:///{tmp / 'x.db'}",
                              "--out", str(out)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    best = load(tmp, "s").best_trial
    header = out.read_text().splitlines()[0]
    assert f"trial {best.number}" in header and "'s'" in header
    exported = yaml.safe_load(out.read_text())
    assert exported == best.user_attrs["config"]                 # every field
    train = subprocess.run(cli("mainrun-train", "--config", str(out), "--no-progress", "--log", str(tmp_path / "l")),
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    value = float(re.search(r"^val_loss=(\S+)$", train.stdout, re.M).group(1))
    assert value == pytest.approx(best.value, abs=1e-6)


def test_export_errors_exit_2(smoke_study, tmp_path):
    tmp, _ = smoke_study
    missing = tmp_path / "typo.db"
    for args in (["--study", "nope"], ["--study", "s", "--trial", "999"]):
        proc = subprocess.run(cli("mainrun-export", *args, "--storage", f"sqlite:///{tmp / 'x.db'}",
                                  "--out", str(tmp_path / "o.yaml")), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    proc = subprocess.run(cli("mainrun-export", "--study", "s", "--storage", f"sqlite:///{missing}",
                              "--out", str(tmp_path / "o.yaml")), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no study database" in proc.stderr
    assert not missing.exists() and not (tmp_path / "o.yaml").exists()
    proc = subprocess.run(cli("mainrun-export", "--study", "s", "--storage", f"sqlite:///{tmp / 'x.db'}",
                              "--out", str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr


def test_a_pruned_trial_exports_without_claiming_a_value(smoke_study, tmp_path):
    tmp, _ = smoke_study
    pruned = load(tmp, "s").get_trials(states=(TrialState.PRUNED,))[0]
    out = tmp_path / "pruned.yaml"
    proc = subprocess.run(cli("mainrun-export", "--study", "s", "--storage", f"sqlite:///{tmp / 'x.db'}",
                              "--trial", str(pruned.number), "--out", str(out)), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"trial {pruned.number} is pruned (pruned at evaluation" in proc.stderr
    header = out.read_text().splitlines()[0]
    assert "(pruned, no full-run val_loss)" in header and "reproduce" not in out.read_text()
    assert yaml.safe_load(out.read_text()) == pruned.user_attrs["config"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_optuna_dashboard_serves_the_study(smoke_study):
    tmp, _ = smoke_study
    port = _free_port()
    dash = subprocess.Popen(cli("optuna-dashboard", f"sqlite:///{tmp / 'x.db'}", "--host", "127.0.0.1",
                                "--port", str(port), "--artifact-dir", str(tmp / "artifacts")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline and dash.poll() is None, "optuna-dashboard did not start"
                time.sleep(0.5)
        summary = next(s for s in studies if s["study_name"] == "s")
        detail = _get_json(f"{base}/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == 6
        assert detail["has_intermediate_values"] is True
        assert detail.get("objective_names") == ["val_loss"]
        # the note's command names the storage: run as written, it finds the study
        assert f"mainrun-export --study s --storage sqlite:///{tmp / 'x.db'} --out best.yaml" in detail["note"]["body"]
        states = {t["state"] for t in detail["trials"]}
        assert "Complete" in states and "Pruned" in states
        trial = next(t for t in detail["trials"] if t["state"] == "Complete")
        assert len(trial["intermediate_values"]) >= 20
        assert {a["filename"] for a in trial["artifacts"]} == {f"trial-{trial['number']}-config.yaml",
                                                               f"trial-{trial['number']}-curves.png",
                                                               f"trial-{trial['number']}.jsonl"}
        artifact = trial["artifacts"][0]
        with urllib.request.urlopen(f"{base}/artifacts/{summary['study_id']}/{trial['trial_id']}/"
                                    f"{artifact['artifact_id']}", timeout=10) as r:
            assert r.status == 200 and r.read()
        # the curves' PNG is served as an image, which the dashboard previews
        png = next(a for a in trial["artifacts"] if a["filename"].endswith("-curves.png"))
        with urllib.request.urlopen(f"{base}/artifacts/{summary['study_id']}/{trial['trial_id']}/"
                                    f"{png['artifact_id']}", timeout=10) as r:
            assert r.headers["Content-Type"] == "image/png" and r.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        dash.terminate()
        dash.wait(timeout=30)


def test_trials_is_a_total_and_a_rerun_resumes(tmp_path, titles_file):
    args = ["--dataset", str(titles_file), "--study", "r"]
    assert search(tmp_path, "--trials", "2", *args).returncode == 0
    assert len(finished(load(tmp_path, "r"))) == 2
    proc = search(tmp_path, "--trials", "3", *args)
    assert proc.returncode == 0 and "resuming study 'r'" in proc.stdout
    assert len(finished(load(tmp_path, "r"))) == 3                 # 3 in total, not 2 + 3
    proc = search(tmp_path, "--trials", "3", *args)
    assert proc.returncode == 0
    assert len(load(tmp_path, "r").trials) == 3                   # nothing more to do
    help_text = subprocess.run(cli("mainrun-search", "--help"), capture_output=True, text=True).stdout
    assert "TOTAL" in help_text and "not 'N more'" in " ".join(help_text.split())


def test_a_different_space_is_refused_unless_a_new_study_is_asked_for(tmp_path, titles_file):
    args = ["--dataset", str(titles_file), "--study", "s", "--trials", "1"]
    assert search(tmp_path, *args).returncode == 0
    other = tmp_path / "other.yaml"
    data = yaml.safe_load(SMOKE.read_text())
    data["params"]["lr"]["high"] = 0.05
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = search(tmp_path, *args, space=other)
    assert proc.returncode == 2
    assert "different search space" in proc.stderr and "--new-study" in proc.stderr
    assert len(load(tmp_path, "s").trials) == 1                   # nothing was added
    proc = search(tmp_path, *args, "--new-study", space=other)
    assert proc.returncode == 0 and "start 's-2'" in proc.stdout
    assert len(finished(load(tmp_path, "s-2"))) == 1
    # the same command again resumes what it started, instead of making 's-3'
    proc = search(tmp_path, "--dataset", str(titles_file), "--study", "s", "--trials", "2", "--new-study", space=other)
    assert proc.returncode == 0 and "resume 's-2'" in proc.stdout and "resuming study 's-2'" in proc.stdout
    assert len(finished(load(tmp_path, "s-2"))) == 2 and "s-3" not in optuna.get_all_study_names(
        f"sqlite:///{tmp_path / 'x.db'}")
    proc = search(tmp_path, *args, space=other)                   # without the flag, the error names it
    assert proc.returncode == 2 and "pass --new-study to resume 's-2'" in proc.stderr
    # the same space on other titles: the trials would not compare either
    other_titles = tmp_path / "other-titles.txt"
    other_titles.write_text("\n".join(make_titles(1500, seed=1)) + "\n")
    proc = search(tmp_path, "--dataset", str(other_titles), "--study", "s", "--trials", "2")
    assert proc.returncode == 2
    assert f"different dataset (it was made on {titles_file})" in proc.stderr and "--new-study" in proc.stderr
    assert len(load(tmp_path, "s").trials) == 1


@pytest.mark.parametrize("same_titles", [True, False], ids=["same-inputs", "other-titles"])
def test_two_searches_started_at_once_on_a_new_study(tmp_path, titles_file, same_titles):
    """One creates the study and the other resumes it once the creator has written its identity:
    with the same inputs the known config is enqueued once, not twice; on other titles the
    second is refused, instead of mixing two datasets in one study."""
    from mainrun.data import prepare_data
    other = tmp_path / "other.txt"
    other.write_text("\n".join(make_titles(1500, seed=1)) + "\n")
    fixed = yaml.safe_load(SMOKE.read_text())["fixed"]
    for titles in (titles_file, other):          # both cached: the two reach the study at the same moment
        prepare_data(RunConfig.from_dict({**fixed, "dataset": str(titles)}), tmp_path / "cache", log=lambda _m: None)
    env = {**os.environ, "MAINRUN_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    runs = [subprocess.Popen(cli("mainrun-search", "--space", str(SMOKE), "--storage", f"sqlite:///{tmp_path / 'x.db'}",
                                 "--study", "both", "--trials", "3", "--dataset", str(titles)),
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for titles in (titles_file, titles_file if same_titles else other)]
    outs = [run.communicate(timeout=300) for run in runs]
    codes = [run.returncode for run in runs]
    said = "\n".join(f"--- search {i}: exit {code}\n{out}\n{err}" for i, (code, (out, err)) in enumerate(zip(codes, outs)))
    trials = load(tmp_path, "both").trials
    if same_titles:
        assert codes == [0, 0], said
        assert [t.user_attrs.get("enqueued_as") for t in trials].count("enqueue[0]") == 1
        assert len(finished(load(tmp_path, "both"))) == 3
    else:
        assert sorted(codes) == [0, 2], said
        refused = outs[codes.index(2)][1]
        assert "different dataset" in refused and "Traceback" not in refused
        assert len({t.user_attrs["config"]["dataset"] for t in trials}) == 1


def _open_study_inputs(tmp_path, titles_file):
    """What open_study takes for the smoke space: the space, its base config, the prepared data
    and a fresh SQLite storage."""
    from mainrun.data import prepare_data
    from mainrun.space import load_space
    from mainrun.storage import StorageSettings, open_storage
    smoke = load_space(str(SMOKE))
    base = RunConfig.from_dict({**smoke.fixed, "dataset": str(titles_file)})
    data = prepare_data(base, tmp_path / "cache", log=lambda _m: None)
    return smoke, base, data, open_storage(StorageSettings(f"sqlite:///{tmp_path / 'c.db'}"))


def test_a_study_interrupted_while_being_created_is_removed_so_the_command_reruns(tmp_path, titles_file,
                                                                                  monkeypatch):
    """Ctrl-C after create_study but before the identity is written left a study that the same
    command then waited for and refused ("never completed"). The creator removes it instead."""
    import mainrun.search.study
    from mainrun.search.study import open_study
    smoke, base, data, storage = _open_study_inputs(tmp_path, titles_file)

    def interrupted(*_args):                  # where a Ctrl-C can land: after the trials are enqueued
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(mainrun.search.study, "_save_dashboard_note", interrupted)
        with pytest.raises(KeyboardInterrupt):
            open_study(smoke, storage, "s", data, base, echo=lambda _m: None)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)] == []
    said: list[str] = []
    monkeypatch.setattr(mainrun.search.study, "IDENTITY_WAIT", 1.0)      # were it left, the rerun would wait, then fail
    study = open_study(smoke, storage, "s", data, base, echo=said.append)
    assert said == [f"search: created study 's' with {len(smoke.enqueue)} enqueued trials"]
    assert study.user_attrs["space_sha256"] == smoke.sha256


def test_a_study_interrupted_inside_a_storage_read_while_being_created_is_removed(tmp_path, titles_file, monkeypatch):
    """The Ctrl-C lands inside a read, just after another search wrote to the same database: the
    read's connection is left holding an old snapshot, and removing the half-made study on it
    failed 'database is locked' at once (the study stayed, and the same command then refused)."""
    import mainrun.search.study
    from helpers import interrupted_inside_the_next_read
    from mainrun.search.study import open_study
    smoke, base, data, storage = _open_study_inputs(tmp_path, titles_file)

    def ctrl_c():
        raise KeyboardInterrupt

    def another_search_writes():
        optuna.create_study(study_name="other", storage=storage.url)

    def reading_when_interrupted(study, *_args):     # after the trials are enqueued, like the real note
        with interrupted_inside_the_next_read(ctrl_c, another_search_writes):
            study.get_trials(deepcopy=False)
    monkeypatch.setattr(mainrun.search.study, "_save_dashboard_note", reading_when_interrupted)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        open_study(smoke, storage, "s", data, base, echo=said.append)
    assert said == []                                          # no "could not remove the half-made study"
    assert [s.study_name for s in optuna.get_all_study_summaries(storage.url, include_best_trial=False)] == ["other"]


def test_when_the_half_made_study_cannot_be_removed_the_first_error_is_raised(tmp_path, titles_file, monkeypatch):
    """The clean-up runs against the same database that may have failed; its own error must not
    replace the one that stopped the creation, and the study left behind is named."""
    import mainrun.search.study
    from mainrun.search.study import open_study
    smoke, base, data, storage = _open_study_inputs(tmp_path, titles_file)

    def interrupted(*_args):
        raise KeyboardInterrupt

    def unreachable(**_kwargs):                 # as when the database went away mid-creation
        raise ConnectionError("server closed the connection")
    monkeypatch.setattr(mainrun.search.study, "_save_dashboard_note", interrupted)
    monkeypatch.setattr(optuna, "delete_study", unreachable)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        open_study(smoke, storage, "s", data, base, echo=said.append)
    assert said == ["search: could not remove the half-made study 's' (ConnectionError: server closed the "
                    "connection); delete it before rerunning: optuna delete-study --study-name s "
                    f"--storage 'sqlite:///{tmp_path / 'c.db'}'"]


def test_new_study_resumes_the_first_matching_name_past_gaps_and_bare_studies(tmp_path, titles_file, monkeypatch):
    """--new-study picks the first NAME-k made from these inputs, wherever it is; a NAME-k that
    was never completed is skipped without waiting; only with no match is a free name started."""
    import mainrun.search.study
    from mainrun.data import prepare_data
    from mainrun.errors import SearchError
    from mainrun.search.study import open_study
    from mainrun.space import load_space
    from mainrun.storage import StorageSettings, open_storage
    monkeypatch.setattr(mainrun.search.study, "IDENTITY_WAIT", 30.0)     # s-2 must not be waited on at all
    other = tmp_path / "other.yaml"
    spec = yaml.safe_load(SMOKE.read_text())
    spec["params"]["lr"]["high"] = 0.05
    other.write_text(yaml.safe_dump(spec, sort_keys=False))
    smoke, changed = load_space(str(SMOKE)), load_space(str(other))
    base = RunConfig.from_dict({**smoke.fixed, "dataset": str(titles_file)})
    data = prepare_data(base, tmp_path / "cache", log=lambda _m: None)
    storage = open_storage(StorageSettings(f"sqlite:///{tmp_path / 'alt.db'}"))
    quiet = dict(echo=lambda _m: None)
    open_study(smoke, storage, "s", data, base, **quiet)
    optuna.create_study(study_name="s-2", storage=storage)                 # never completed
    open_study(smoke, storage, "s-3", data, base, **quiet)                 # made from the first inputs
    open_study(changed, storage, "s-5", data, base, **quiet)               # from the changed ones, past a gap
    started = time.time()
    with pytest.raises(SearchError, match="pass --new-study to resume 's-5'"):
        open_study(changed, storage, "s", data, base, **quiet)
    assert open_study(changed, storage, "s", data, base, new_study=True, **quiet).study_name == "s-5"
    assert open_study(smoke, storage, "s-3", data, base, **quiet).study_name == "s-3"
    spec["params"]["lr"]["high"] = 0.06                                   # a third space: nothing matches
    other.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert open_study(load_space(str(other)), storage, "s", data, base, new_study=True, **quiet).study_name == "s-4"
    assert time.time() - started < 20                                     # the bare s-2 was never waited on


def test_a_study_that_was_never_completed_is_refused_after_a_wait(tmp_path, titles_file, monkeypatch):
    """A study of that name without mainrun's identity (made by another tool, or its creator
    stopped at once) is neither trusted as matching nor waited on forever."""
    import mainrun.search.study
    from mainrun.errors import SearchError
    from mainrun.search import SearchOptions, run_search
    from mainrun.storage import StorageSettings
    url = f"sqlite:///{tmp_path / 'n.db'}"
    optuna.create_study(study_name="bare", storage=url)
    monkeypatch.setattr(mainrun.search.study, "IDENTITY_WAIT", 1.0)
    with pytest.raises(SearchError, match="'bare' exists but was never completed"):
        run_search(SearchOptions(space=str(SMOKE), trials=1, dataset=str(titles_file), study="bare",
                                 storage=StorageSettings(url)))
    assert load(tmp_path, "bare", db="n.db").trials == []


def test_a_diverging_trial_is_pruned_with_its_reason(tmp_path, titles_file):
    space = tmp_path / "nan.yaml"
    data = yaml.safe_load(SMOKE.read_text())
    data["fixed"].update({"optimizer": "sgd", "grad_clip": 0.0, "d_model": 32, "n_head": 2})
    data["params"] = {"lr": {"low": 1.0e+30, "high": 1.0e+31, "log": True}}
    data.pop("enqueue")
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = search(tmp_path, "--trials", "1", "--dataset", str(titles_file), "--study", "n", space=space)
    assert proc.returncode == 0, proc.stderr
    (trial,) = load(tmp_path, "n").trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["prune_reason"].startswith("diverged:")
    assert trial.user_attrs["steps"] < 50                          # stopped at once, not after 7 epochs


def test_out_of_memory_is_recorded_as_failed_and_the_search_goes_on(tmp_path, titles_file, monkeypatch, capsys):
    """No GPU in CI, so the OOM itself is simulated: the first d_model=32 run raises CUDA's
    OutOfMemoryError; everything else (storage, objective, workers) is real. The one CPU worker
    runs in this process: its signal handlers and thread count are put back when it ends."""
    import signal

    import torch

    import mainrun.train
    from mainrun.search import SearchOptions, run_search
    from mainrun.search.workers import usable_cpus
    from mainrun.storage import StorageSettings
    real_train, calls, during = mainrun.train.train, [], []

    def train_or_oom(cfg, *args, **kwargs):
        calls.append(cfg)
        during.append((torch.get_num_threads(), signal.getsignal(signal.SIGTERM)))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(mainrun.train, "train", train_or_oom)
    monkeypatch.chdir(tmp_path)
    threads, handlers = torch.get_num_threads(), (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    torch.set_num_threads(max(1, usable_cpus() - 1))      # differs from the worker's share where it can
    try:
        code = run_search(SearchOptions(space=str(SMOKE), trials=2, dataset=str(titles_file), study="o",
                                        storage=StorageSettings(f"sqlite:///{tmp_path / 'o.db'}"))).exit_code
        assert torch.get_num_threads() == max(1, usable_cpus() - 1)
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    finally:
        torch.set_num_threads(threads)
    assert {n for n, _ in during} == {usable_cpus()} and all(h is not handlers[0] for _, h in during)
    assert code == 0
    study = optuna.load_study(study_name="o", storage=f"sqlite:///{tmp_path / 'o.db'}")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"].startswith("CUDA out of memory")
    assert len(finished(study)) == 2 and len(study.trials) == 3     # not retried: a new trial filled its place
    assert "FAILED (CUDA out of memory" in capsys.readouterr().out


def _assert_a_sigterm_in_train_stops_the_search(tmp_path, titles_file, monkeypatch, capsys, train_with_sigterm):
    """A one-worker search whose train() raises SIGTERM: the trial is recorded as interrupted,
    the worker and the search each say so, and the search exits 143."""
    import mainrun.train
    from mainrun.search import SearchOptions, run_search
    from mainrun.storage import StorageSettings
    monkeypatch.setattr(mainrun.train, "train", train_with_sigterm)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    code = run_search(SearchOptions(space=str(SMOKE), trials=3, dataset=str(titles_file), study="s",
                                    storage=StorageSettings(url))).exit_code
    assert code == 143
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [(t.state, t.user_attrs.get("fail_reason")) for t in trials] == [(TrialState.FAIL, "interrupted")]
    out = capsys.readouterr().out
    assert "[w0] interrupted (SIGTERM); trial 0 is recorded as failed" in out
    assert "search: interrupted (SIGTERM); the same command resumes the study" in out


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_dropped_in_a_gc_callback_still_stops_the_worker(tmp_path, titles_file, monkeypatch, capsys):
    """A SIGTERM whose KeyboardInterrupt lands in a garbage-collector callback is dropped by
    Python ("Exception ignored"). The worker must still stop at its next evaluation, record the
    trial as interrupted and exit 143, not run the search to its end ignoring every signal."""
    import signal
    import weakref

    import mainrun.train
    real_train = mainrun.train.train

    def train_after_a_dropped_sigterm(cfg, *args, **kwargs):
        class Thing:
            pass
        thing = Thing()
        ref = weakref.ref(thing, lambda _ref: signal.raise_signal(signal.SIGTERM))
        del thing                               # the callback runs here and its exception is dropped
        assert ref() is None
        return real_train(cfg, *args, **kwargs)

    _assert_a_sigterm_in_train_stops_the_search(tmp_path, titles_file, monkeypatch, capsys,
                                                train_after_a_dropped_sigterm)


def test_a_signal_that_other_code_wraps_in_its_own_error_is_still_an_interrupt(tmp_path, titles_file,
                                                                              monkeypatch, capsys):
    """A signal whose KeyboardInterrupt lands in code that wraps it (on Python 3.11, class
    creation turns it into "RuntimeError: Error calling __set_name__") is an interrupt: the
    trial is recorded as interrupted, not as failed with that RuntimeError, and the search
    stops with 143. Seen in CI when a Ctrl-C reached a worker during a lazy import."""
    import signal

    import mainrun.train
    real_train = mainrun.train.train

    def train_after_a_wrapped_sigterm(cfg, *args, **kwargs):
        class Field:
            def __set_name__(self, owner, name):
                signal.raise_signal(signal.SIGTERM)

        class Thing:                            # defining it runs __set_name__
            field = Field()
        return real_train(cfg, *args, **kwargs)

    _assert_a_sigterm_in_train_stops_the_search(tmp_path, titles_file, monkeypatch, capsys,
                                                train_after_a_wrapped_sigterm)


def test_an_artifacts_folder_that_fails_costs_the_artifacts_not_the_result(tmp_path, titles_file, monkeypatch,
                                                                             capsys):
    import shutil

    import mainrun.train
    from mainrun.search import SearchOptions, run_search
    from mainrun.storage import StorageSettings
    real_train, artifacts = mainrun.train.train, tmp_path / "artifacts"

    def train_then_lose_the_folder(cfg, *args, **kwargs):
        result = real_train(cfg, *args, **kwargs)
        shutil.rmtree(artifacts)
        artifacts.write_text("")                # uploads now fail, for root too (NotADirectoryError)
        return result

    monkeypatch.setattr(mainrun.train, "train", train_then_lose_the_folder)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    code = run_search(SearchOptions(space=str(SMOKE), trials=1, dataset=str(titles_file), study="a",
                                    storage=StorageSettings(url), artifacts=str(artifacts))).exit_code
    assert code == 0
    [trial] = optuna.load_study(study_name="a", storage=url).trials
    assert trial.state == TrialState.COMPLETE and trial.value > 0
    assert "Not a directory" in trial.user_attrs["artifact_error"]
    assert "trial 0: its config and log were not saved as artifacts" in capsys.readouterr().out


def test_a_worker_refuses_inputs_changed_since_the_search_started(tmp_path, titles_file, capsys):
    """A later round of workers (after one died) re-reads the space and the titles: edited
    since the study was opened, they are refused (exit 2), not trained on."""
    import time as _time

    from mainrun.search import SearchOptions
    from mainrun.search.objective import SearchObjective
    from mainrun.search.workers import WorkerContext, run_worker
    from mainrun.space import load_space
    from mainrun.storage import StorageSettings
    url = f"sqlite:///{tmp_path / 'c.db'}"
    proc = search(tmp_path, "--trials", "1", "--dataset", str(titles_file), "--study", "c", db="c.db")
    assert proc.returncode == 0, proc.stderr
    study = load(tmp_path, "c", db="c.db")
    space = load_space(str(SMOKE))
    base = SearchOptions(space=str(SMOKE), dataset=str(titles_file)).base_config(space)
    titles_file.write_text("\n".join(make_titles(1500, seed=7)) + "\n")
    ctx = WorkerContext(objective=SearchObjective(space, base, titles_sha256=study.user_attrs["titles_sha256"]),
                        storage=StorageSettings(url), study_name="c", trials=2, device="cpu",
                        artifacts=str(tmp_path / "artifacts"), worker=0, start_time=_time.time(), finished_at_start=1)
    assert run_worker(ctx) == 2
    assert f"the dataset {titles_file} changed while the search ran" in capsys.readouterr().out
    assert len(load(tmp_path, "c", db="c.db").trials) == 1


def test_a_worker_rereads_the_space_file_and_refuses_only_a_change_of_meaning(tmp_path, titles_file):
    """A worker checks the space file against the space the search loaded (it carries that space,
    parsed and validated once): an edit of its comments is no change; a changed range is refused."""
    import shutil

    from mainrun.data import prepare_data
    from mainrun.errors import InputsChanged
    from mainrun.search import SearchOptions
    from mainrun.search.objective import SearchObjective
    from mainrun.space import load_space
    path = tmp_path / "space.yaml"
    shutil.copy(SMOKE, path)
    space = load_space(str(path))
    base = SearchOptions(space=str(path), dataset=str(titles_file)).base_config(space)
    objective = SearchObjective(space, base, prepare_data(base, log=lambda _m: None).titles_sha256)
    assert objective.checked_data().titles_sha256 == objective.titles_sha256
    path.write_text(path.read_text() + "\n# tried on Tuesday\n")
    assert objective.checked_data().titles_sha256 == objective.titles_sha256
    spec = yaml.safe_load(path.read_text())
    spec["params"]["lr"]["high"] = 0.05
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(InputsChanged, match=f"the search space file {path} changed while the search ran"):
        objective.checked_data()


def test_a_trial_that_would_not_fit_is_refused_before_it_starts(tmp_path, titles_file):
    """On the smoke space (fp32, CPU) the estimate is ~2.0-2.2 MiB at d_model 16 and ~2.5-2.9 MiB
    at d_model 32: a 2.3 MiB budget refuses every d_model-32 trial, the enqueued one first."""
    budget_gib = 2.3 / 1024
    proc = search(tmp_path, "--trials", "3", "--dataset", str(titles_file), "--study", "m", "--seed", "1",
                  "--memory-budget", str(budget_gib))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = load(tmp_path, "m")
    refused = study.get_trials(states=(TrialState.FAIL,))
    assert refused and refused[0].number == 0                       # the enqueued d_model-32 trial
    for t in refused:
        assert t.user_attrs["refused"] is True and t.params["d_model"] == 32
        assert t.user_attrs["fail_reason"].startswith("does not fit: needs ~")
        assert "--memory-budget" in t.user_attrs["fail_reason"]
        assert "train_seconds" not in t.user_attrs                  # nothing ran
    assert len(finished(study)) == 3
    for t in finished(study):
        assert t.params["d_model"] == 16
        assert t.user_attrs["memory_estimate_mb"] <= budget_gib * 1024
    assert "FAILED (does not fit: needs ~2." in proc.stdout and "MiB by estimate" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr          # an expected failure, said once, plainly


def test_a_space_where_nothing_fits_stops_with_a_clear_message(tmp_path, titles_file):
    proc = search(tmp_path, "--trials", "2", "--dataset", str(titles_file), "--study", "z",
                  "--memory-budget", "1e-6")
    assert proc.returncode == 1
    assert "did not fit in memory" in proc.stdout and "--memory-budget" in proc.stdout
    study = load(tmp_path, "z")
    assert not finished(study) and all(t.user_attrs.get("refused") for t in study.trials)
    assert search(tmp_path, "--memory-budget", "0").returncode == 2


def test_dry_run_shows_the_plan_and_touches_nothing(tmp_path):
    import torch

    from mainrun.config import PRESETS, RunConfig
    from mainrun.memory import estimate_memory_bytes
    proc = search(tmp_path, "--dry-run", "--dataset", "not-read.txt", "--memory-budget", "9", "--confirm", "3",
                  space=SPACES / "arch.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "nothing is created, read or trained" in out and "sampler tpe" in out and "pruner median" in out
    for name in ("optimizer", "lr", "beta2", "d_model", "head_dim", "warmup_steps"):
        assert re.search(rf"^  {name} +\S", out, re.M), name
    assert "0.0001 .. 0.03 log" in out and "(when optimizer in sgd)" in out
    report_003 = RunConfig.from_dict(PRESETS["report-003"])
    need = estimate_memory_bytes(report_003, 16000, torch.device("cuda")) / 2**30   # GPU sizes (bf16), on any machine
    assert re.search(rf"enqueued report-003 +117\.\dM params  ~{need:.1f} GiB", out)
    assert "largest of 4000 corners" in out and "d_model=1280 n_layer=12" in out
    assert re.search(r"--memory-budget 9 GiB: \d+ of the 4000 corners would be refused", out)
    assert out.rstrip().endswith("then --confirm 3: the best 3 distinct configs and the references it enqueues "
                                 "(baseline, report-000, report-003), each on train seeds 1, 2, 3: at most 18 more "
                                 "full runs")
    assert list(tmp_path.iterdir()) == []                          # no database, no cache, no artifacts


def test_timeout_starts_no_trial_after_it_and_a_rerun_resumes(tmp_path, titles_file):
    args = ["--dataset", str(titles_file), "--study", "t", "--trials", "50"]
    proc = search(tmp_path, *args, "--timeout", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--timeout reached with" in proc.stdout and "of 50 trials finished" in proc.stdout
    study = load(tmp_path, "t")
    done = finished(study)
    assert 1 <= len(done) < 50 and len(done) == len(study.trials)   # the running trial finished
    first = min(t.datetime_start for t in study.trials)
    assert all((t.datetime_start - first).total_seconds() < 4 + 2 for t in study.trials)
    assert search(tmp_path, *args, "--timeout", "0").returncode == 2


def test_sampler_and_pruner_from_the_command_line(tmp_path, titles_file):
    """The efficiency experiment's control arm: random search without pruning, same space file."""
    args = ["--dataset", str(titles_file), "--study", "rand", "--trials", "3"]
    proc = search(tmp_path, *args, "--sampler", "random", "--pruner", "none", space=aggressive_space(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = load(tmp_path, "rand")
    assert study.user_attrs["sampler"] == "random" and study.user_attrs["pruner"] == "none"
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3        # the aggressive pruner is off
    # the policy is part of the study's identity, like the space itself
    proc = search(tmp_path, *args, space=aggressive_space(tmp_path))
    assert proc.returncode == 2 and "different search space" in proc.stderr
    assert search(tmp_path, *args, "--sampler", "nope").returncode == 2


# ---------------------------------------------------------------------- bad inputs: exit 2, nothing written
def test_bad_datasets_exit_2_before_anything_is_written(tmp_path):
    few = tmp_path / "few.txt"
    few.write_text("\n".join(make_titles(50)) + "\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n".join(make_titles(1200)[:600] + ["   "] + make_titles(1200)[600:]) + "\n")
    cases = {"missing.txt": "not found", str(few): "num_titles", str(empty): "empty"}
    for dataset, words in cases.items():
        proc = search(tmp_path, "--trials", "1", "--dataset", dataset, "--study", "d")
        assert proc.returncode == 2, (dataset, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "x.db").exists()


def test_bad_devices_and_storages_exit_2_before_anything_is_created(tmp_path, titles_file):
    import torch

    cases = [(["--device", "bogus"], "not a device name"),
             (["--storage", "sqlite://"], "in-memory SQLite"),
             (["--storage", "sqlite:///:memory:"], "in-memory SQLite"),
             (["--storage", "sqllite:///x.db"], "unknown database kind 'sqllite'"),
             (["--storage", "sqlite://x.db"], "a SQLite URL has no host"),               # two slashes
             (["--storage", "postgresql+pg8000://u@h/db"], "its driver is not installed")]
    if importlib.util.find_spec("pg8000") is not None:        # the driver-missing case needs a missing driver
        cases.pop()
    if not torch.cuda.is_available():
        cases += [(["--gpus", "0"], "no CUDA GPU"), (["--device", "cuda"], "no CUDA GPU")]
    for args, words in cases:
        argv = cli("mainrun-search", "--space", str(SMOKE), "--trials", "1", "--dataset", str(titles_file), *args)
        env = {**os.environ, "MAINRUN_CACHE_DIR": str(tmp_path / "cache")}
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["titles.txt"], args   # no study, no data work


def test_a_corrupt_database_or_an_impossible_artifacts_or_checkpoint_folder_exits_2(tmp_path, titles_file):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(bytes(range(256)) * 32)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [(["--storage", f"sqlite:///{corrupt}"], "file is not a database"),
             (["--artifacts", str(a_file / "artifacts")], "--artifacts"),
             (["--checkpoint-dir", str(a_file / "checkpoints")], f"--checkpoint-dir {a_file / 'checkpoints'}: ")]
    for args, words in cases:
        argv = cli("mainrun-search", "--space", str(SMOKE), "--trials", "1", "--dataset", str(titles_file),
                   "--storage", f"sqlite:///{tmp_path / 'x.db'}", *args)
        env = {**os.environ, "MAINRUN_CACHE_DIR": str(tmp_path / "cache")}
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.db").exists()                     # the artifacts are checked before the study


def test_checkpoints_live_beside_the_artifacts_unless_told_otherwise():
    from mainrun.storage import checkpoint_dir
    assert checkpoint_dir("sqlite:///studies/x.db") == Path("studies/checkpoints")
    assert checkpoint_dir("sqlite:////data/s.db") == Path("/data/checkpoints")
    assert checkpoint_dir("sqlite:////data/s.db", artifacts="/mnt/shared/artifacts") == Path("/mnt/shared/checkpoints")
    assert checkpoint_dir("postgresql+psycopg://u@h/db") == Path("studies/checkpoints")
    assert checkpoint_dir("postgresql+psycopg://u@h/db", "/a", override="/shared/ck") == Path("/shared/ck")


def test_storage_urls_never_show_a_password_and_a_malformed_one_is_a_clear_error():
    from mainrun.errors import SearchError
    from mainrun.storage import check_storage_url, redact
    assert redact("postgresql+psycopg://u:s3cr3t@h/db") == "postgresql+psycopg://u:***@h/db"
    assert redact("postgresql+psycopg://u@h/db?password=s3cr3t") == "postgresql+psycopg://u@h/db?password=***"
    for url in ("postgresql+psycopg://u:p@ss:w/rd@h:1/db", "postgresql+psycopg://u@h:port/db"):
        with pytest.raises(SearchError, match="not a SQLAlchemy URL") as info:
            check_storage_url(url)
        assert "ss:w" not in str(info.value)


def test_unreachable_storage_exits_2_without_echoing_the_password(tmp_path, titles_file):
    url = "postgresql+psycopg://mainrun:s3cr3t-pw@127.0.0.1:9/nodb"
    proc = subprocess.run(cli("mainrun-search", "--space", str(SMOKE), "--trials", "1", "--dataset", str(titles_file),
                              "--storage", url), capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "cannot open the study storage" in proc.stderr and "127.0.0.1" in proc.stderr
    assert "s3cr3t-pw" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_gpu_space_without_a_gpu_warns_loudly(tmp_path):
    proc = search(tmp_path, "--dataset", "missing.txt", space=SPACES / "arch.yaml")
    assert "WARNING: no GPU found" in proc.stdout
    assert proc.returncode == 2


def test_a_repeated_suggestion_reuses_the_finished_trial(tmp_path, titles_file):
    """Two points only: from the third trial on, every suggestion repeats a finished one."""
    space = tmp_path / "two.yaml"
    data = yaml.safe_load(SMOKE.read_text())
    data["params"] = {"mlp": {"choices": ["gelu", "relu2"]}}
    data["fixed"].update({"d_model": 32, "n_head": 2})
    data.pop("enqueue")
    data["pruner"] = "none"
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = search(tmp_path, "--trials", "5", "--dataset", str(titles_file), "--study", "d", "--seed", "0",
                  space=space)
    assert proc.returncode == 0, proc.stderr
    trials = finished(load(tmp_path, "d"))
    assert len(trials) == 5
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs]
    copies = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len({t.params["mlp"] for t in trained}) == len(trained) <= 2
    for t in copies:
        original = next(o for o in trials if o.number == t.user_attrs["duplicate_of"])
        assert t.params == original.params and t.value == original.value
        assert "train_seconds" not in t.user_attrs                  # no run was spent on it
        assert f"trial {t.number:>3} | val_loss {t.value:.4f}, repeat of #{original.number} (not retrained)" in proc.stdout
    # the closing table lists each config once, and says how many repeats it left out
    table = proc.stdout.split("trial  val_loss  train s  params\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [int(line.split()[0]) for line in table[:-1]] == [t.number for t in sorted(trained, key=lambda t: t.value)]
    assert table[-1] == f"  ({len(copies)} repeat(s) of a finished config not listed: same value, not retrained)"


def test_a_resumed_seeded_search_does_not_replay_its_first_suggestions(tmp_path, titles_file):
    args = ["--dataset", str(titles_file), "--study", "r", "--seed", "0", "--sampler", "random", "--pruner", "none"]
    assert search(tmp_path, *args, "--trials", "2").returncode == 0
    proc = search(tmp_path, *args, "--trials", "4")
    assert proc.returncode == 0, proc.stderr
    trials = load(tmp_path, "r").trials
    assert len(finished(load(tmp_path, "r"))) == 4
    assert not [t.number for t in trials if "duplicate_of" in t.user_attrs]
    assert len({t.params["lr"] for t in trials}) == 4
    # a smaller --trials than the study holds: said plainly, nothing run
    proc = search(tmp_path, *args, "--trials", "3")
    assert proc.returncode == 0 and "already holds 4 finished trials" in proc.stdout
    assert len(load(tmp_path, "r").trials) == 4


def test_a_resume_enqueues_known_configs_added_since_or_interrupted(tmp_path, titles_file):
    space = tmp_path / "known.yaml"
    data = yaml.safe_load(SMOKE.read_text())
    data["pruner"] = {"name": "none"}
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    args = ["--dataset", str(titles_file), "--study", "k"]
    assert search(tmp_path, *args, "--trials", "1", space=space).returncode == 0
    study = load(tmp_path, "k")
    # a known config whose trial was interrupted (as Ctrl-C records it) ...
    interrupted = {"optimizer": "adamw", "lr": 0.002, "d_model": 16, "head_dim": 8, "mlp": "relu2"}
    study.enqueue_trial(interrupted, user_attrs={"enqueued_as": "was-interrupted"})
    trial = study.ask()
    trial.set_user_attr("fail_reason", "interrupted")
    study.tell(trial, state=TrialState.FAIL)
    # ... one whose worker died twice (a stale heartbeat fails a trial with no reason of its
    # own; and its retry died too) ...
    lost = {"optimizer": "sgd", "lr": 0.02, "momentum": 0.5, "d_model": 16, "head_dim": 16, "mlp": "gelu"}
    for _ in range(2):
        study.enqueue_trial(lost, user_attrs={"enqueued_as": "lost-worker"})
        study.tell(study.ask(), state=TrialState.FAIL)
    # ... and one added to the file since: all run on resume; the finished one does not run again
    added = {"optimizer": "adamw", "lr": 0.01, "d_model": 32, "head_dim": 16, "mlp": "swiglu"}
    data["enqueue"] += [{**interrupted, "label": "was-interrupted"}, {**lost, "label": "lost-worker"},
                        {**added, "label": "added-later"}]
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = search(tmp_path, *args, "--trials", "4", space=space)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "enqueued was-interrupted, lost-worker, added-later" in proc.stdout
    done = sorted(finished(load(tmp_path, "k")), key=lambda t: t.number)
    assert [t.user_attrs.get("enqueued_as") for t in done] == ["enqueue[0]", "was-interrupted", "lost-worker",
                                                               "added-later"]
    assert done[1].params == interrupted and done[2].params == lost and done[3].params == added


def test_a_seeded_sequential_search_is_repeatable(tmp_path, titles_file):
    runs = []
    for db in ("a.db", "b.db"):
        proc = search(tmp_path, "--trials", "4", "--dataset", str(titles_file), "--study", "r", "--seed", "7", db=db)
        assert proc.returncode == 0, proc.stderr
        runs.append([(t.params, t.state, t.value) for t in load(tmp_path, "r", db=db).trials])
    assert runs[0] == runs[1]
    assert len({str(params) for params, _, _ in runs[0]}) == 4            # four different points


def test_a_cpu_worker_refuses_a_model_the_host_cannot_hold(tmp_path, titles_file):
    """A mistyped depth (2,000,000 for 2) on the CPU: the default budget is the host's available
    memory, so the trial is refused by its estimate (as on a GPU) instead of hanging the worker while
    it builds the model; --dry-run counts the corners that would be refused."""
    data = yaml.safe_load(SMOKE.read_text())
    del data["fixed"]["n_layer"]
    data["params"]["n_layer"] = {"values": [1, 2_000_000]}
    data["enqueue"][0]["n_layer"] = 2_000_000
    space = tmp_path / "deep.yaml"
    space.write_text(yaml.safe_dump(data, sort_keys=False))

    dry = search(tmp_path, "--dry-run", "--dataset", "not-read.txt", space=space)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    m = re.search(r"default budget \(the host has [\d.]+ [GM]iB available for 1 worker\(s\), [\d.]+ [GM]iB each\): "
                  r"(\d+) of the (\d+) corners would be refused", dry.stdout)
    assert m and int(m[1]) * 2 == int(m[2]), dry.stdout                  # the deep half of the corners

    proc = search(tmp_path, "--trials", "2", "--dataset", str(titles_file), "--study", "deep", space=space)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = load(tmp_path, "deep")
    refused = study.get_trials(states=(TrialState.FAIL,))
    assert refused and refused[0].number == 0                           # the enqueued deep one, first
    for t in refused:
        assert t.user_attrs["refused"] is True and t.params["n_layer"] == 2_000_000
        assert re.match(r"does not fit: needs ~[\d.]+ GiB by estimate; the host has [\d.]+ [GM]iB available",
                        t.user_attrs["fail_reason"]), t.user_attrs["fail_reason"]
    assert [t.params["n_layer"] for t in finished(study)] == [1, 1]
