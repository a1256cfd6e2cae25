"""The search benchmark on the CPU: a real search and a real replay of a study's configs, read
back from their studies. Nothing here asserts a time; the benchmark is for the GPU."""
from __future__ import annotations

import html
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
