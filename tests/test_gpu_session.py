"""scripts/gpu_session.sh, the prepared command of a GPU session, dry-run on the CPU with tiny
spaces in place of the real ones: every step runs, and what comes back in $OUT is enough to resume
a study in a later session and to build the report here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import optuna
import pytest
import yaml

from helpers import ROOT, SPACES, TINY, cli

SCRIPT = ROOT / "scripts" / "gpu_session.sh"
STEPS = ["confirm", "runs", "search-bench", "ablate", "ablate-seeds"]


def run_session(tmp_path: Path, titles_file: Path, out: Path, *steps: str, **env: str) -> subprocess.CompletedProcess:
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY))
    ablation = tmp_path / "ablate.yaml"
    ablation.write_text(yaml.safe_dump({
        "cpu_ok": True, "sampler": {"name": "random"}, "pruner": {"name": "none"},
        "fixed": {**TINY, "optimizer": "adamw"}, "params": {"mlp": {"choices": ["gelu", "swiglu"]}},
        "enqueue": [{"label": "best", "mlp": "gelu"}, {"label": "swiglu", "like": "best", "mlp": "swiglu"}]}))
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                "OUT": str(out), "WORK": str(tmp_path / "work"),
                "DATA": str(titles_file), "DEVICE": "cpu", "JOBS": "2",
                "CONFIRM_SPACE": str(SPACES / "smoke.yaml"), "SEARCH_SPACE": str(SPACES / "smoke.yaml"),
                "SEARCH_TRIALS": "2", "ABLATE_SPACE": str(ablation), "ABLATE_TRIALS": "2",
                "RUNS_ARGS": f"--base {tiny} --ablate mlp=swiglu", **env}
    return subprocess.run(["bash", str(SCRIPT), *steps], env=full_env, capture_output=True, text=True,
                          timeout=900)


def trials(db: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{db}").get_trials()


def test_every_step_runs_and_out_holds_the_studies_the_rows_and_the_artifacts(tmp_path, titles_file):
    out = tmp_path / "out"
    proc = run_session(tmp_path, titles_file, out, *STEPS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "ablate.db", "artifacts.tar.gz", "bench.db", "runs.json", "search-bench.json", "session.log", "standin.db"]
    log = (out / "session.log").read_text()
    for step in STEPS:
        assert f"step {step}: exit 0 in" in log
    assert "step confirm: mainrun-search --space" in log          # the command as a user would type it

    # confirm: the search's 4 trials, and its complete configs on train seeds 1, 2, 3
    searched = trials(out / "standin.db", "standin")
    assert len(searched) == 4 and all(t.state.is_finished() for t in searched)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in searched)
    confirmed = trials(out / "standin.db", "standin-confirm")
    assert len(confirmed) == 3 * complete
    assert {t.user_attrs["train_seed"] for t in confirmed} == {1, 2, 3}
    # ablate-seeds: both configs on the three seeds, and the table against the best
    assert len(trials(out / "ablate.db", "ablate-confirm")) == 6
    assert "against best" in log
    rows = json.loads((out / "runs.json").read_text())
    assert [r["run"] for r in rows] == ["base", "mlp=swiglu"] and all(0 < r["val_loss"] < 10 for r in rows)
    [search_row] = json.loads((out / "search-bench.json").read_text())
    assert search_row["finished"] == 2 and search_row["exit_code"] == 0

    # back on this machine: the artifacts go beside the study, and the report is built from them
    here = tmp_path / "returned"
    here.mkdir()
    (here / "standin.db").write_bytes((out / "standin.db").read_bytes())
    with tarfile.open(out / "artifacts.tar.gz") as tar:
        tar.extractall(here, filter="data")
    assert any((here / "artifacts").iterdir())
    report = subprocess.run(cli("mainrun-report", "--study", "standin", "--storage", f"sqlite:///{here / 'standin.db'}",
                                "--out", str(here / "report")), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "Confirmed" in (here / "report" / "index.html").read_text()

    # a later session, given the returned study, runs only what is missing: nothing
    again = run_session(tmp_path, titles_file, tmp_path / "out2", "confirm", RESUME=str(out),
                        WORK=str(tmp_path / "work2"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(trials(tmp_path / "out2" / "standin.db", "standin")) == 4
    assert len(trials(tmp_path / "out2" / "standin.db", "standin-confirm")) == 3 * complete


@pytest.mark.parametrize("steps, env, code, messages", [
    (["confirm", "runs"], {"BUDGET_S": "60"}, 0, ["step confirm: skipped, ", "s left (it needs 120s)",
                                                 "step runs: skipped, "]),
    (["bogus"], {}, 2, ["error: unknown step 'bogus'; known: confirm runs search-bench ablate ablate-seeds"]),
    (["confirm"], {"DATA": "missing.txt"}, 2, ["error: no corpus at missing.txt"]),
])
def test_what_cannot_run_is_said_and_nothing_trains(tmp_path, titles_file, steps, env, code, messages):
    out = tmp_path / "out"
    proc = run_session(tmp_path, titles_file, out, *steps, **env)
    assert proc.returncode == code
    for message in messages:
        assert message in proc.stdout + proc.stderr
    assert not (out / "standin.db").exists()
