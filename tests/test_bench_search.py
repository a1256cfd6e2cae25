"""The search benchmark on the CPU: a real search and a real replay of a study's configs, read
back from their studies. Nothing here asserts a time; the benchmark is for the GPU."""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from helpers import SPACES, TINY, bench, cli


def test_search_rows_give_the_headline_figures(tmp_path, titles_file):
    kept = tmp_path / "kept"
    args = ("--dataset", str(titles_file), "--search", str(SPACES / "smoke.yaml"), "--trials", "2",
            "--pruner", "none", "--inductor-cache", "empty", "--studies", str(kept))
    rows, stdout = bench(tmp_path, *args)
    (row,) = rows
    assert row["storage"] == f"sqlite:///{kept / 'bench.db'}"          # kept where asked, to be brought back
    # the same folder again would resume its finished study: refused before anything runs
    proc = subprocess.run([sys.executable, "-m", "mainrun.bench", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "holds bench.db from an earlier bench" in proc.stderr, proc.stderr
    study = optuna.load_study(study_name=row["study"], storage=row["storage"])
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert row["best"] == min(t.value for t in trials)
    setup = sum(t.user_attrs["setup_seconds"] for t in trials)
    spent = sum(t.user_attrs["train_seconds"] + t.user_attrs["prep_seconds"] for t in trials)
    assert row["setup_s"] == pytest.approx(setup) and row["setup_share"] == pytest.approx(setup / spent)
    assert row["inductor_cache"] == "empty" and 0 < row["setup_share"] < 1
    assert row["devices"] == ["cpu (fp32)"] and "trained on: cpu (fp32)" in stdout     # timings name their device
    for column in ("wall s", "device s", "setup %", "trials/h", "full runs/h", "best"):
        assert column in stdout


def test_several_pruners_and_seeds_make_a_policy_comparison(tmp_path, titles_file):
    """--pruner A,B --seed 0,1: one search per pruner and seed, each recording its policy, and the
    closing line's command compares them by policy (the real mainrun-report --compare)."""
    rows, stdout = bench(tmp_path, "--dataset", str(titles_file), "--search", str(SPACES / "smoke.yaml"),
                         "--trials", "2", "--pruner", "none,patient", "--seed", "0,1", "--studies", "kept")
    assert [(r["study"], r["pruner"], r["seed"]) for r in rows] == [
        ("bench-jobs1-none-seed0", "none", 0), ("bench-jobs1-none-seed1", "none", 1),
        ("bench-jobs1-patient-seed0", "patient", 0), ("bench-jobs1-patient-seed1", "patient", 1)]
    assert all(r["exit_code"] == 0 and r["finished"] == 2 for r in rows)
    studies = [optuna.load_study(study_name=r["study"], storage=r["storage"]) for r in rows]
    # the space's sampler options stay; the pruner is the named one, with mainrun's defaults
    assert [s.user_attrs["policy"]["pruner"] for s in studies] == [{"name": "none"}] * 2 + [{"name": "patient"}] * 2
    assert studies[0].user_attrs["policy"]["sampler"] == {"name": "tpe", "n_startup_trials": 2}
    command = stdout.strip().splitlines()[-1]
    assert command.startswith("compare them at an equal budget, by policy: mainrun-report --compare ")
    args = command.split(": ", 1)[1].split()
    proc = subprocess.run(cli(*args[:-2], "--out", str(tmp_path / "compare")), capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "compare" / "compare.html").read_text(encoding="utf-8")
    policies = re.search(r"<table id='policies'>(.*?)</table>", page, re.S).group(1)
    labels = re.findall(r"<tr><td class='l'>([^<]*)</td><td>2</td>", policies)
    assert labels == ["tpe(n_startup_trials=2)+none", "tpe(n_startup_trials=2)+patient"]
    assert "By policy, at that budget: tpe(n_startup_trials=2)+none " in html.unescape(page)


def test_replay_trains_a_studys_configs_in_order_in_full_and_reproduces_their_values(tmp_path, titles_file):
    """The controlled mode: the source study's trials, pruned ones included, trained again in
    full in trial order; a complete trial's value comes back (the same config, seed and CPU)."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    env = {**os.environ, "MAINRUN_CACHE_DIR": os.environ["MAINRUN_CACHE_DIR"]}
    proc = subprocess.run(cli("mainrun-search", "--space", str(SPACES / "smoke.yaml"), "--storage", source,
                              "--trials", "3", "--dataset", str(titles_file), "--seed", "1"),
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows, stdout = bench(tmp_path, "--dataset", str(titles_file), "--replay", "smoke", "--replay-storage", source)
    (row,) = rows
    assert (row["finished"], row["pruned"], row["failed"], row["exit_code"]) == (3, 0, 0, 0)
    originals = optuna.load_study(study_name="smoke", storage=source).trials
    replayed = optuna.load_study(study_name=row["study"], storage=row["storage"]).trials
    assert [t.user_attrs["replays"] for t in replayed] == [f"trial {t.number} of study 'smoke'" for t in originals]
    for original, again in zip(originals, replayed):
        assert again.user_attrs["config"] == {**original.user_attrs["config"], "dataset": str(titles_file)}
        assert again.user_attrs["steps"] == again.user_attrs["max_steps"]           # never pruned
        if original.state == TrialState.COMPLETE:
            assert again.value == pytest.approx(original.value, abs=1e-6)
    assert "replay jobs 1" in stdout


def test_a_compiled_replay_says_what_a_kept_shape_saves_in_setup(tmp_path, titles_file):
    """Compiled trials record how many graphs they traced: 0 where the worker kept the shape from
    an earlier trial. The bench row splits the setup by it, and says so under its table."""
    from mainrun.config import RunConfig
    source = f"sqlite:///{tmp_path / 'source.db'}"
    study = optuna.create_study(study_name="two", storage=source)
    config = RunConfig.from_dict({**TINY, "dataset": str(titles_file), "epochs": 1, "optimizer": "adamw",
                                  "compile": "regional"})
    for dropout in (0.1, 0.2):                 # one shape: the second trial's worker has kept it
        study.add_trial(optuna.trial.create_trial(value=3.0, user_attrs={"config": config.replace(
            dropout=dropout).to_dict()}))
    rows, stdout = bench(tmp_path, "--dataset", str(titles_file), "--replay", "two", "--replay-storage", source,
                         "--inductor-cache", "empty", "--studies", "kept")
    (row,) = rows
    replayed = optuna.load_study(study_name=row["study"], storage=row["storage"]).trials
    assert [t.user_attrs["traced_graphs"] > 0 for t in replayed] == [True, False]
    first, second = (t.user_attrs["setup_seconds"] for t in replayed)
    assert (row["traced_trials"], row["kept_shape_trials"]) == (1, 1)
    assert (row["traced_setup_median_s"], row["kept_setup_median_s"]) == (first, second)
    assert (f"replay jobs 1: setup per trial (median) {first:.2f} s in the 1 that traced their graphs, "
            f"{second:.2f} s in the 1 whose worker had kept their shape from an earlier trial") in stdout


def test_replaying_a_study_without_configs_or_of_several_datasets_exits_2(tmp_path, titles_file):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="bare", storage=url).add_trial(optuna.create_trial(value=1.0))
    proc = subprocess.run([sys.executable, "-m", "mainrun.bench", "--dataset", str(titles_file), "--replay", "bare",
                           "--replay-storage", url], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "holds no trial with a recorded config" in proc.stderr
    assert "Traceback" not in proc.stderr
    mixed = optuna.create_study(study_name="mixed", storage=url)
    for vocab in (300, 400):
        config = {**TINY, "dataset": str(titles_file), "vocab_size": vocab}
        mixed.add_trial(optuna.create_trial(value=1.0, user_attrs={"config": config}))
    proc = subprocess.run([sys.executable, "-m", "mainrun.bench", "--dataset", str(titles_file), "--replay", "mixed",
                           "--replay-storage", url], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "trial 1 of study 'mixed' prepares other data than trial 0" in proc.stderr


# A stand-in for nvidia-cuda-mps-control (no GPU in CI): it logs what the bench asks of it, and
# lists a server only when told to, as the real daemon does once a CUDA context went through it.
FAKE_MPS_CONTROL = """#!/bin/sh
if [ "$1" = "-d" ]; then
    echo "start $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY" >> "$FAKE_MPS_LOG"
    [ "$FAKE_MPS_START" = fail ] && { echo "An instance of this daemon is already running" >&2; exit 1; }
    exit 0
fi
read line
echo "$line" >> "$FAKE_MPS_LOG"
[ "$line" = get_server_list ] && [ "$FAKE_MPS_SERVES" = 1 ] && echo 4242
exit 0
"""


def _fake_mps_on_path(tmp_path, **env: str) -> dict[str, str]:
    """The environment with the stand-in daemon first on the PATH, logging to tmp_path/mps.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(FAKE_MPS_CONTROL)
    control.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_MPS_LOG": str(tmp_path / "mps.log"), **env}


@pytest.mark.parametrize("serves", [True, False])
def test_mps_runs_the_bench_through_a_daemon_and_says_whether_it_served(tmp_path, titles_file, serves):
    """--mps starts the control daemon with its pipe and log folders in the environment the
    workers inherit, asks it for its servers while the bench runs, and quits it at the end. A
    CUDA program that misses the daemon runs without MPS silently, so a bench that no server
    served says so and exits 1."""
    env = _fake_mps_on_path(tmp_path, FAKE_MPS_SERVES="1" if serves else "0")
    log = tmp_path / "mps.log"
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "mainrun.bench", "--dataset", str(titles_file), "--search",
                           str(SPACES / "smoke.yaml"), "--trials", "1", "--pruner", "none", "--mps", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    lines = log.read_text().splitlines()
    start = lines[0].split()
    assert start[0] == "start" and start[1].endswith("/pipe") and start[2].endswith("/log")
    assert "mainrun-mps-" in start[1] and lines[-1] == "quit" and "get_server_list" in lines
    (row,) = json.loads(out.read_text())
    if serves:
        assert proc.returncode == 0 and row["mps"] is True, proc.stdout + proc.stderr
        assert "MPS: on (1 MPS server(s) served the workers)" in proc.stdout
    else:
        assert proc.returncode == 1 and row["mps"] is False and row["exit_code"] == 0
        assert "MPS: the daemon ran, but no worker went through it" in proc.stdout
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


def test_mps_that_cannot_start_exits_2_before_anything_runs(tmp_path, titles_file):
    args = [sys.executable, "-m", "mainrun.bench", "--dataset", str(titles_file), "--search", str(SPACES / "smoke.yaml"),
            "--mps", "--studies", str(tmp_path / "kept")]
    bare = {**os.environ, "PATH": os.path.dirname(sys.executable)}          # no nvidia-cuda-mps-control
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=bare, timeout=120)
    assert proc.returncode == 2 and "CUDA MPS is not on this machine" in proc.stderr, proc.stderr
    failing = _fake_mps_on_path(tmp_path, FAKE_MPS_START="fail")
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=failing, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the MPS control daemon did not start (exit 1): An instance of this daemon is already running" in proc.stderr
    assert not (tmp_path / "kept").exists()
