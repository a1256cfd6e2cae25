"""mainrun-confirm: the statistics against plain formulas, the confirmation of studies built
directly (export by mean, the report's section, refusals that create nothing), and real tiny runs
on the CPU: seeds paired across configs, the search study untouched, a SIGKILLed confirmation
rerun running only what is missing, mainrun-search --confirm."""
from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from helpers import ROOT, SPACES, TINY, cli, make_titles
from mainrun.config import PRESETS, RunConfig
from mainrun.errors import SearchError

T_975_3 = 3.182446305284263     # the 97.5% quantile of Student's t with 3 degrees of freedom (tables)
T_975_2 = 4.302652729911275     # ... with 2


# ---------------------------------------------------------------------- the statistics
def test_spread_agrees_with_plain_formulas():
    from mainrun.confirm.stats import spread
    values = [1.0031, 1.0072, 1.0049, 1.0090]
    s = spread(values)
    mean, sd = sum(values) / 4, math.sqrt(sum((v - sum(values) / 4) ** 2 for v in values) / 3)
    half = T_975_3 * sd / 2
    assert (s.n, s.mean, s.sd) == (4, pytest.approx(mean, abs=1e-12), pytest.approx(sd, abs=1e-12))
    assert s.ci == pytest.approx((mean - half, mean + half), abs=1e-12)
    one, flat = spread([1.0]), spread([1.0, 1.0, 1.0])
    assert one.ci is None and one.sd is None and "one seed" in one.why_no_ci
    assert flat.ci is None and flat.sd == 0 and "same value" in flat.why_no_ci


def test_paired_comparison_and_verdicts_agree_with_plain_formulas():
    from scipy import stats

    from mainrun.confirm.stats import paired, verdict
    best, ref = [1.0031, 1.0060, 1.0047, 1.0052], [1.0539, 1.0580, 1.0551, 1.0570]
    d = [r - b for b, r in zip(best, ref)]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    t = mean / (sd / 2)
    r = paired(best, ref)
    assert (r.n, r.diff, r.sd) == (4, pytest.approx(mean, abs=1e-12), pytest.approx(sd, abs=1e-12))
    assert r.ci == pytest.approx((mean - T_975_3 * sd / 2, mean + T_975_3 * sd / 2), abs=1e-12)
    assert r.p == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-9)
    low, high = r.ci
    assert verdict("trial 27", "report-003", r) == (f"trial 27 beats report-003 by {mean:.4f} (95% CI {low:.4f} to "
                                                     f"{high:.4f}, 4 paired seeds, p = {r.p:.2g})")
    # the other way round: the second config is the better one
    assert verdict("report-003", "trial 27", paired(ref, best)).startswith(f"trial 27 beats report-003 by {mean:.4f}")
    close = paired([1.0, 1.002, 1.001], [1.001, 1.001, 1.003])
    assert close.ci[0] < 0 < close.ci[1]
    assert verdict("trial 27", "trial 31", close).startswith("trial 27 and trial 31 are not distinguishable "
                                                              "(difference 0.0007, CI ")
    # too little to say: honest words, no interval
    assert "cannot be compared yet" in verdict("a", "b", paired([1.0], [1.1]))
    same = paired([1.0, 1.1], [1.5, 1.6])
    assert same.ci is None and verdict("a", "b", same).startswith("a beats b by 0.5000 on each of the 2 paired seeds")


def test_winners_curse_is_judged_against_the_fresh_seeds():
    from mainrun.confirm.stats import spread, winners_curse
    fresh = spread([1.010, 1.012, 1.011])                   # sd 0.001
    assert winners_curse(1.0075, fresh) and not winners_curse(1.0095, fresh)
    assert not winners_curse(0.9, spread([1.01])) and not winners_curse(0.9, spread([1.01, 1.01]))


# ---------------------------------------------------------------------- studies built directly
def tiny_config(titles: Path, **changes) -> dict:
    return RunConfig.from_dict({**TINY, "batch_size": 32, "epochs": 1, "dataset": str(titles), **changes}).to_dict()


def search_study(url: str, name: str, titles: Path, rows, sha: str = "0" * 64) -> optuna.Study:
    """A finished 'search' made without training: rows of (value, config changes, enqueued_as)."""
    study = optuna.create_study(study_name=name, storage=url, direction="minimize")
    study.set_user_attr("dataset", str(titles))
    study.set_user_attr("titles_sha256", sha)
    for value, changes, label in rows:
        attrs = {"config": tiny_config(titles, **changes), **({"enqueued_as": label} if label else {})}
        study.add_trial(optuna.create_trial(value=value, user_attrs=attrs))
    return study


def add_runs(url: str, study: optuna.Study, values_by_trial: dict[int, list[float]], seeds=(1, 2, 3)) -> None:
    """Companion runs as mainrun-confirm records them, with the values given."""
    from mainrun.confirm.companion import companion_name, pair_attrs
    from mainrun.confirm.finalists import Finalist
    companion = optuna.create_study(study_name=companion_name(study.study_name), storage=url, direction="minimize")
    companion.set_user_attr("confirms_study", study.study_name)
    trials = {t.number: t for t in study.trials}
    for number, values in values_by_trial.items():
        t = trials[number]
        finalist = Finalist(t, t.user_attrs.get("enqueued_as") or f"trial {number}")
        for seed, value in zip(seeds, values):
            attrs = pair_attrs(finalist, seed, study.study_name, t.user_attrs["config"]["dataset"])
            companion.add_trial(optuna.create_trial(value=value, user_attrs=attrs))


@pytest.fixture
def lucky_study(tmp_path, titles_file):
    """Trial 0 has the best official value but a poor mean (a lucky seed); trial 1 the best mean."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    study = search_study(url, "lucky", titles_file, [(1.000, {"lr": 1e-3}, None), (1.020, {"lr": 2e-3}, None),
                                                     (1.050, {"lr": 3e-3}, "report-003"), (1.300, {"lr": 4e-3}, None)])
    add_runs(url, study, {0: [1.100, 1.110, 1.120], 1: [1.030, 1.022, 1.040], 2: [1.061, 1.055, 1.066]})
    return url, study


def test_confirmation_ranks_by_mean_and_compares_the_best_with_references_and_runner_up(lucky_study):
    from mainrun.confirm.companion import read_companion
    from mainrun.confirm.results import read_confirmation
    from mainrun.confirm.stats import paired
    url, study = lucky_study
    c = read_confirmation(study, read_companion(study))
    assert [x.finalist.trial.number for x in c.configs] == [1, 2, 0]          # by mean, not by official value
    assert c.seeds == [1337, 1, 2, 3]
    best, ref, lucky = c.configs
    assert best.official == 1.020 and best.values == {1337: 1.020, 1: 1.030, 2: 1.022, 3: 1.040}
    assert best.spread.mean == pytest.approx((1.020 + 1.030 + 1.022 + 1.040) / 4)
    # trial 0 is neither a reference nor the runner-up: not compared
    assert [(cmp.b.name, cmp.why) for cmp in c.comparisons] == [("report-003", "reference and runner-up")]
    cmp = c.comparisons[0]
    assert cmp.seeds == [1, 2, 3, 1337]
    independent = paired([1.030, 1.022, 1.040, 1.020], [1.061, 1.055, 1.066, 1.050])
    assert (cmp.result.diff, cmp.result.ci) == (pytest.approx(independent.diff), pytest.approx(independent.ci))
    assert cmp.verdict.startswith("trial 1 beats report-003 by 0.0300 (95% CI ")
    assert lucky.winners_curse and not best.winners_curse and not ref.winners_curse


def test_against_a_base_compares_every_other_config_with_it_seed_by_seed(lucky_study):
    """An ablation's table: each config minus the base (report-003 here), paired, with its CI."""
    from mainrun.confirm.companion import read_companion
    from mainrun.confirm.console import confirmation_lines
    from mainrun.confirm.results import read_confirmation
    from mainrun.confirm.stats import paired
    url, study = lucky_study
    c = read_confirmation(study, read_companion(study), against="report-003")
    assert [(cmp.a.name, cmp.b.name, cmp.why) for cmp in c.comparisons] == [
        ("trial 1", "report-003", "against report-003"), ("trial 0", "report-003", "against report-003")]
    base = [1.050, 1.061, 1.055, 1.066]                                  # seeds 1337, 1, 2, 3
    for cmp, values in zip(c.comparisons, ([1.020, 1.030, 1.022, 1.040], [1.000, 1.100, 1.110, 1.120])):
        change, ci = cmp.change
        independent = paired(base, values)                               # diff = mean(values - base)
        assert change == pytest.approx(independent.diff) and ci == pytest.approx(independent.ci)
    lines = confirmation_lines(c)
    start = lines.index(next(line for line in lines if line.startswith("against report-003")))
    better, mixed = lines[start + 2], lines[start + 3]
    assert better.split()[:3] == ["trial", "1", "-0.0300"] and better.endswith("better")
    # trial 0: better on its official seed, worse on the other three; the CI holds 0
    assert mixed.split()[:3] == ["trial", "0", f"{(1.000 + 1.100 + 1.110 + 1.120 - sum(base)) / 4:+.4f}"]
    assert mixed.endswith("not distinguishable")
    assert not any(line.startswith("verdicts") for line in lines)        # the table replaces them
    with pytest.raises(SearchError, match="--against trial 3: no config of that name .* trial 1, report-003, trial 0"):
        read_confirmation(study, read_companion(study), against="trial 3")


def test_top_all_takes_every_complete_config_and_names_a_variant_that_never_completed(lucky_study, capsys):
    from mainrun.cli import confirm_main
    url, study = lucky_study
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={
        "config": study.trials[0].user_attrs["config"], "enqueued_as": "wsd"}))
    assert confirm_main(["--study", "lucky", "--storage", url, "--top", "all", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "confirm: enqueued wsd did not complete (fail): left out" in out
    rows = [line.split()[0] for line in out.splitlines()[3:7]]
    assert rows == ["0", "1", "2", "3"] and "fewer than" not in out
    assert "train seeds 1, 2, 3: 12 runs, 9 settled in 'lucky-confirm', 3 to run" in out


def test_export_confirmed_takes_the_best_mean_and_says_its_seeds(lucky_study, tmp_path, capsys):
    from mainrun.cli import export_main
    url, _ = lucky_study
    out = tmp_path / "best.yaml"
    assert export_main(["--study", "lucky", "--storage", url, "--confirmed", "--out", str(out)]) == 0
    text = out.read_text()
    cfg = RunConfig.from_yaml(out)
    assert cfg.lr == 2e-3 and cfg.train_seed is None                  # trial 1's config, the official seed
    sd = statistics.stdev([1.020, 1.030, 1.022, 1.040])
    assert f"mean ± sd 1.0280 ± {sd:.4f} over 4 train seeds (1337 (official), 1, 2, 3)" in text
    assert "official (train seed 1337) 1.020000" in text
    assert "exported trial 1 (val_loss mean 1.028000" in capsys.readouterr().out
    # the plain export still takes the best single run
    assert export_main(["--study", "lucky", "--storage", url, "--out", str(out)]) == 0
    assert RunConfig.from_yaml(out).lr == 1e-3


def test_the_report_has_a_confirmed_section(lucky_study, tmp_path):
    from mainrun.report import build_report
    url, _ = lucky_study
    page = build_report(url, "lucky", tmp_path / "out").read_text()
    assert "Confirmed on extra train seeds" in page and "plot-confirmed" in page
    assert "trial 1 beats report-003 by 0.0300" in page
    assert "winner&#39;s curse: trial 0&#39;s official value 1.0000" in page
    assert (tmp_path / "out" / "confirmed.png").stat().st_size > 0
    # a study without a confirmation has no such section
    plain = search_study(url, "plain", tmp_path / "t.txt", [(1.0, {}, None)])
    assert "Confirmed on extra" not in build_report(url, plain.study_name, tmp_path / "out2").read_text()


def test_the_report_against_a_base_compares_every_config_with_it(lucky_study, tmp_path, capsys):
    from mainrun.cli import report_main
    url, _ = lucky_study
    assert report_main(["--study", "lucky", "--storage", url, "--out", str(tmp_path / "out"),
                        "--against", "report-003"]) == 0
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Every config against report-003" in page
    assert "trial 1 beats report-003 by 0.0300" in page and "trial 0 and report-003 are not distinguishable" in page
    assert page.count("[against report-003]") == 2
    with pytest.raises(SystemExit) as exit_:
        report_main(["--study", "lucky", "--storage", url, "--out", str(tmp_path / "o2"), "--against", "nope"])
    assert exit_.value.code == 2 and "--against nope: no config of that name" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()                              # refused before anything is written


def test_the_edges_named_are_those_of_the_best_by_mean_not_of_the_best_run(lucky_study, tmp_path, capsys):
    """lr 2e-3 (trial 1, the best mean) is the top of the recorded space's lr values; lr 1e-3
    (trial 0, the best single run) is inside: the confirmation and the report name trial 1's."""
    from mainrun.confirm.companion import read_companion
    from mainrun.confirm.console import print_confirmation
    from mainrun.confirm.results import read_confirmation
    from mainrun.report import build_report
    url, study = lucky_study
    study.set_user_attr("space_yaml", "params:\n  lr: {values: [0.0005, 0.001, 0.002]}\n")
    print_confirmation(read_confirmation(study, read_companion(study)), url, print, study)
    out = capsys.readouterr().out
    assert "the confirmed best (trial 1) is at the edge of the space" in out
    assert "  lr 0.002 is the top of its range: widen it" in out
    page = build_report(url, "lucky", tmp_path / "out").read_text()
    assert "Where the confirmed best (best mean) sits at the edge" in page and "<li>lr 0.002 is the top" in page


@pytest.mark.parametrize("argv, message", [
    (["--study", "nope"], "no study 'nope'"),
    (["--seeds", "0"], "--seeds: expected a positive integer"),
    (["--top", "0"], "--top: expected a positive integer"),
    (["--seed-list", "1,2,1"], "--seed-list repeats 1"),
    (["--seed-list", "1,1337"], "--seed-list contains 1337, the official train seed"),
    (["--seeds", "2", "--seed-list", "3,4"], "not allowed with argument"),
    (["--dataset", "OTHER"], "its titles are not those study 'lucky' was searched on"),
    (["--study", "lucky-confirm"], "holds a confirmation's runs"),
    (["--top", "many"], "--top: expected a positive integer or 'all'"),
    (["--against", "nope"], "--against nope: not among the configs to confirm (trial 0)"),
], ids=["unknown-study", "seeds-0", "top-0", "repeated-seed", "official-seed", "both", "other-titles", "companion",
        "top-word", "against-unknown"])
def test_bad_input_exits_2_and_creates_nothing(tmp_path, titles_file, capsys, argv, message):
    from mainrun.cli import confirm_main
    url = f"sqlite:///{tmp_path / 'c.db'}"
    study = search_study(url, "lucky", titles_file, [(1.0, {}, None)])
    if "lucky-confirm" in argv:
        add_runs(url, study, {0: [1.1]}, seeds=(1,))
    other = tmp_path / "other.txt"
    other.write_text("\n".join(make_titles(1500, seed=9)) + "\n")
    argv = [a.replace("OTHER", str(other)) for a in argv]
    names = optuna.get_all_study_names(url)
    if "--study" not in argv:
        argv = ["--study", "lucky", *argv]
    with pytest.raises(SystemExit) as exit_:
        confirm_main([*argv, "--storage", url, "--device", "cpu", "--artifacts", str(tmp_path / "artifacts")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert optuna.get_all_study_names(url) == names                   # no companion study
    assert not (tmp_path / "artifacts").exists()


# ---------------------------------------------------------------------- real tiny runs
def next_suggestion(url: str, name: str, titles: Path) -> dict:
    """What a seeded TPE sampler would suggest next in the study, asked on a copy of it."""
    from mainrun.space import load_space
    copy = optuna.storages.InMemoryStorage()
    optuna.copy_study(from_study_name=name, from_storage=url, to_storage=copy)
    study = optuna.load_study(study_name=name, storage=copy, sampler=optuna.samplers.TPESampler(seed=7,
                                                                                              n_startup_trials=1))
    space = load_space(str(SPACES / "smoke.yaml"))
    space.suggest(study.ask(), RunConfig.from_dict({"dataset": str(titles)}, base=RunConfig.from_dict(space.fixed)))
    return study.trials[-1].params


@pytest.fixture
def quick_space(tmp_path) -> Path:
    spec = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    spec["fixed"].update(batch_size=32, epochs=1)
    spec["pruner"] = {"name": "none"}
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_confirmation_pairs_the_seeds_and_leaves_the_search_study_alone(tmp_path, titles_file, quick_space, capsys):
    from mainrun.confirm.run import ConfirmOptions, run_confirm
    from mainrun.search import SearchOptions, run_search
    from mainrun.storage import StorageSettings
    url = f"sqlite:///{tmp_path / 's.db'}"
    where = dict(storage=StorageSettings(url), dataset=str(titles_file), device="cpu",
                 artifacts=str(tmp_path / "artifacts"))
    assert run_search(SearchOptions(space=str(quick_space), trials=2, study="s", seed=0, **where)).exit_code == 0
    assert "mainrun-confirm --study s --storage" in capsys.readouterr().out          # the closing lines name it
    trials_before = [(t.number, t.state, t.value) for t in optuna.load_study(study_name="s", storage=url).trials]
    suggestion_before = next_suggestion(url, "s", titles_file)

    assert run_confirm(ConfirmOptions(study="s", top=5, seeds=2, **where)) == 0
    out = capsys.readouterr().out
    assert "2 complete trial(s) with distinct configs, fewer than --top 5: confirming those" in out
    assert "verdicts (paired t-test" in out

    search = optuna.load_study(study_name="s", storage=url)
    assert [(t.number, t.state, t.value) for t in search.trials] == trials_before
    assert next_suggestion(url, "s", titles_file) == suggestion_before
    runs = optuna.load_study(study_name="s-confirm", storage=url).trials
    assert [t.state for t in runs] == [TrialState.COMPLETE] * 4
    seeds_by_source = {}
    for t in runs:
        source = search.trials[t.user_attrs["source_trial"]]
        assert t.user_attrs["source_study"] == "s"
        assert t.user_attrs["config"] == {**source.user_attrs["config"], "train_seed": t.user_attrs["train_seed"]}
        assert f"trial {source.number}" in t.user_attrs["confirms"]
        assert t.user_attrs["confirms"].endswith(f" of study 's' on train seed {t.user_attrs['train_seed']}")
        seeds_by_source.setdefault(source.number, []).append(t.user_attrs["train_seed"])
    assert seeds_by_source == {0: [1, 2], 1: [1, 2]}                 # the same seeds for every config: paired
    assert len({t.value for t in runs} | {t.value for t in search.trials}) == 6     # each seed its own run

    # the same command again: nothing missing, nothing run
    assert run_confirm(ConfirmOptions(study="s", top=5, seeds=2, **where)) == 0
    assert "4 already in 's-confirm', 0 enqueued now" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="s-confirm", storage=url).trials) == 4


def test_search_with_confirm_confirms_the_study_it_ran_on_its_workers(tmp_path, titles_file, quick_space, capsys):
    """mainrun-search --confirm K, with --new-study: the search runs in 's-2' (an 's' of another space
    exists), and the confirmation must follow it there."""
    from mainrun.cli import search_main
    url = f"sqlite:///{tmp_path / 's.db'}"
    flags = ["--storage", url, "--study", "s", "--trials", "1", "--dataset", str(titles_file), "--device", "cpu",
             "--artifacts", str(tmp_path / "a")]
    assert search_main(["--space", str(SPACES / "smoke.yaml"), *flags]) == 0
    assert search_main(["--space", str(quick_space), *flags, "--new-study", "--confirm", "1"]) == 0
    assert "confirmation of study 's-2'" in capsys.readouterr().out
    assert "s-confirm" not in optuna.get_all_study_names(url)
    runs = optuna.load_study(study_name="s-2-confirm", storage=url).trials
    assert sorted(t.user_attrs["train_seed"] for t in runs if t.state == TrialState.COMPLETE) == [1, 2, 3]
    assert {t.user_attrs["source_study"] for t in runs} == {"s-2"}



def test_a_search_that_did_not_finish_is_not_confirmed(tmp_path, capsys):
    from mainrun.confirm.run import confirm_after_search
    from mainrun.search import Searched, SearchOptions
    from mainrun.storage import StorageSettings
    url = f"sqlite:///{tmp_path / 's.db'}"
    opts = SearchOptions(space="unused.yaml", storage=StorageSettings(url), device="cpu")
    assert confirm_after_search(opts, Searched(exit_code=130, study_name="s"), top=1) == 130
    assert "confirm: not started, since the search did not finish" in capsys.readouterr().out
    assert not (tmp_path / "s.db").exists()


def test_a_dry_run_with_confirm_says_what_the_confirmation_adds_and_skips_the_official_seed(tmp_path, capsys):
    from mainrun.cli import search_main
    spec = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    spec["fixed"]["train_seed"] = 2                  # the search's own runs are train seed 2
    space = tmp_path / "seeded.yaml"
    space.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert search_main(["--space", str(space), "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--dataset", "unread.txt",
                        "--dry-run", "--confirm", "2"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "then --confirm 2: the best 2 distinct configs, each on train seeds 1, 3, 4: at most 6 more full runs")
    assert list(tmp_path.iterdir()) == [space]

def _training(pid: int) -> bool:
    """Whether the process has a trial's JSONL log open, i.e. trains a run now."""
    try:
        return any(os.readlink(fd).endswith(".jsonl") and "/trial-" in os.readlink(fd)
                   for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def test_a_killed_confirmation_reruns_only_what_is_missing(tmp_path, titles_file):
    from mainrun.data import prepare_data
    url = f"sqlite:///{tmp_path / 'k.db'}"
    sha = prepare_data(RunConfig.from_dict(tiny_config(titles_file)), log=lambda _m: None).titles_sha256
    search_study(url, "k", titles_file, [(1.0, {"lr": 1e-3}, None), (1.1, {"lr": 3e-3}, "baseline")], sha=sha)
    argv = cli("mainrun-confirm", "--study", "k", "--storage", url, "--seeds", "2", "--device", "cpu",
               "--artifacts", str(tmp_path / "artifacts"), "--heartbeat", "1", "--heartbeat-grace", "2")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    log = tmp_path / "first.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:    # kill it inside its second run
            runs = optuna.load_study(study_name="k-confirm", storage=url).trials \
                if "k-confirm" in optuna.get_all_study_names(url) else []
            if any(t.state == TrialState.COMPLETE for t in runs) and _training(proc.pid):
                break
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    before = optuna.load_study(study_name="k-confirm", storage=url).trials
    done_before = {t.number for t in before if t.state == TrialState.COMPLETE}
    assert 1 <= len(done_before) < 4 and any(t.state == TrialState.RUNNING for t in before)
    time.sleep(2.5)                                          # the dead run's heartbeat expires

    rerun = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{4} runs, 4 already in 'k-confirm', 0 enqueued now" in rerun.stdout   # waiting and running ones count
    after = optuna.load_study(study_name="k-confirm", storage=url).trials
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    pairs = [(t.user_attrs["source_trial"], t.user_attrs["train_seed"]) for t in complete]
    assert sorted(pairs) == [(0, 1), (0, 2), (1, 1), (1, 2)]                      # each pair once
    assert done_before <= {t.number for t in complete}                            # nothing done twice
    assert [t.state for t in after].count(TrialState.FAIL) == 1                   # the killed run, retried
    assert len(after) == len(before) + 1


def test_a_run_that_fails_for_good_ends_the_confirmation_without_a_blank_trial(tmp_path, titles_file, capsys):
    """A run refused for memory fails for good: the workers ask for no trial of their own after
    it (none would carry a config to train), and the confirmation says which run has no value."""
    from mainrun.confirm.run import ConfirmOptions, run_confirm
    from mainrun.data import prepare_data
    from mainrun.storage import StorageSettings
    url = f"sqlite:///{tmp_path / 'f.db'}"
    sha = prepare_data(RunConfig.from_dict(tiny_config(titles_file)), log=lambda _m: None).titles_sha256
    search_study(url, "f", titles_file, [(1.0, {}, None)], sha=sha)
    code = run_confirm(ConfirmOptions(study="f", storage=StorageSettings(url), seed_list=[5], device="cpu",
                                      artifacts=str(tmp_path / "a"), memory_budget_gib=1e-6))
    out = capsys.readouterr().out
    assert code == 1, out[-3000:]
    runs = optuna.load_study(study_name="f-confirm", storage=url).trials
    assert [(t.state, t.user_attrs.get("train_seed")) for t in runs] == [(TrialState.FAIL, 5)]
    assert "trial 0: seed 5 has no value (failed: does not fit" in out
    assert "confirm: 1 run(s) have no value (trial 0 seed 5)" in out


# ---------------------------------------------------------------------- the GPU evidence's study
def test_the_standin_space_enqueues_exactly_the_four_configs():
    """search_spaces/confirm-standin.yaml trains the checked-in best, its no-QK-norm variant and
    the two reports, each exactly as the ablation and the search ran them (eager, compile none)."""
    from mainrun.space import load_space
    space = load_space(str(SPACES / "confirm-standin.yaml"))
    base = RunConfig.from_dict(space.fixed)
    configs = {label: space.suggest(optuna.trial.FixedTrial(params), base).to_dict() for label, params in space.enqueue}
    best = RunConfig.from_yaml(ROOT / "studies" / "best-standin.yaml").to_dict()
    same = {k: v for k, v in best.items() if k != "dataset"}

    def without_dataset(cfg):
        return {k: v for k, v in cfg.items() if k != "dataset"}
    assert list(configs) == ["best-standin", "no-qk-norm", "report-003", "report-000"]
    assert without_dataset(configs["best-standin"]) == same
    assert without_dataset(configs["no-qk-norm"]) == {**same, "qk_norm": False}
    for preset in ("report-003", "report-000"):
        assert configs[preset] == RunConfig.from_dict(PRESETS[preset], base=RunConfig(compile="none")).to_dict()


def test_the_ablation_space_enqueues_the_best_and_one_change_of_it_each():
    """search_spaces/ablate-best.yaml: 'best' is the checked-in best as it ran (eager), each
    variant differs from it in the fields its label names (batch and context also move the lr or
    the warmup, as the file says), and report-003 is the preset."""
    from mainrun.space import load_space
    space = load_space(str(SPACES / "ablate-best.yaml"))
    base = RunConfig.from_dict(space.fixed)
    configs = {label: space.suggest(optuna.trial.FixedTrial(params), base).to_dict() for label, params in space.enqueue}
    best = {k: v for k, v in RunConfig.from_yaml(ROOT / "studies" / "best-standin.yaml").to_dict().items()
            if k != "dataset"}

    def changes(label):
        return {k: v for k, v in configs[label].items() if k != "dataset" and v != best[k]}
    lr = best["lr"]
    assert changes("best") == {}
    assert {label: changes(label) for label in configs if label not in ("best", "report-003")} == {
        "muon": {"optimizer": "muon"},
        "muon-2x-lr": {"optimizer": "muon", "lr": pytest.approx(2 * lr)},
        "wsd": {"schedule": "wsd"},
        "min-lr-0.1": {"min_lr_frac": 0.1},
        "residual-scaled": {"residual_init": "scaled"},
        "residual-zero": {"residual_init": "zero"},
        "kaiming": {"init": "kaiming"},
        "batch-32": {"batch_size": 32, "lr": pytest.approx(lr / math.sqrt(2)), "warmup_steps": 1000},
        "batch-128": {"batch_size": 128, "lr": pytest.approx(lr * math.sqrt(2)), "warmup_steps": 250},
        "block-64": {"block_size": 64, "warmup_steps": 1000},
        "block-256": {"block_size": 256, "warmup_steps": 250},
        "no-qk-norm": {"qk_norm": False},
        "untied": {"tie_embeddings": False},
    }
    assert configs["report-003"] == RunConfig.from_dict(PRESETS["report-003"], base=RunConfig(compile="none")).to_dict()
