"""mainrun-report --compare: the comparison's numbers on hand-built trials, then the real CLI on a
real study pair (the shared smoke study and a random, unpruned one)."""
from __future__ import annotations

import datetime
import html
import re
import shutil
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from helpers import cli
from test_report import PNG_MAGIC, STUDY, env, external_references, smoke_study


# ---------------------------------------------------------------------- comparing studies: the numbers
T0 = datetime.datetime(2025, 1, 1, 12, 0, 0)


def _trial(state, ends_at: float | None, value=None, train=None, prep=None, steps=None, last=None):
    """A finished (or running, ends_at None) trial with the user attrs mainrun-search records."""
    attrs = {k: v for k, v in {"train_seconds": train, "prep_seconds": prep, "steps": steps}.items() if v is not None}
    trial = optuna.trial.create_trial(state=state, value=value, user_attrs=attrs,
                                      intermediate_values={} if last is None else {0: last})
    trial.datetime_start = T0
    trial.datetime_complete = None if ends_at is None else T0 + datetime.timedelta(seconds=ends_at)
    return trial


def _in_memory_study(name: str, attrs: dict, trials: list) -> optuna.Study:
    study = optuna.create_study(study_name=name, direction="minimize")
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for trial in trials:
        study.add_trial(trial)
    return study


def _pruning_and_plain_studies() -> tuple[optuna.Study, optuna.Study]:
    C, P, F, R = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING
    # numbers 0..6; they finish in the order 4, 0, 2, 3, 6, 1 (5 is still running)
    pruning = _in_memory_study("with-pruning", {"sampler": "tpe", "pruner": "median"}, [
        _trial(C, 10, 1.0, train=10, prep=0, steps=100),
        _trial(C, 40, 0.435, train=10, prep=0, steps=100),
        # pruned: Optuna records the last reported value, "better" than any but not a final value
        _trial(P, 20, 0.1, train=2, prep=0, steps=10, last=0.1),
        _trial(P, 25, 0.2, train=2, prep=0, steps=10, last=0.2),
        _trial(F, 5),                                                  # no timings: counts 0, noted
        _trial(R, None, train=99, prep=0),                             # not finished: left out
        _trial(C, 30, 0.8, train=10, prep=2, steps=100),
    ])
    # an older study: no sampler/pruner attrs, only the space file's text
    plain = _in_memory_study("plain", {"space_yaml": "sampler: {name: random}\npruner: {name: none}\n"}, [
        _trial(C, 10 * (i + 1), value, train=10, prep=0, steps=100) for i, value in enumerate((0.9, 0.45, 0.7, 0.43))])
    return pruning, plain


def test_compare_studies_numbers_on_hand_built_trials():
    from mainrun.compare import best_within, compare_studies, seconds_to_reach, verdict
    cmp = compare_studies(list(_pruning_and_plain_studies()))
    pruning, plain = cmp.studies
    # ordered by completion time, not number; the pruned trials' values never become the best
    assert pruning.curve == [(0.0, None), (10.0, 1.0), (12.0, 1.0), (14.0, 1.0), (26.0, 0.8), (36.0, 0.435)]
    assert plain.curve == [(10.0, 0.9), (20.0, 0.45), (30.0, 0.45), (40.0, 0.43)]
    assert (pruning.sampler, pruning.pruner, plain.sampler, plain.pruner) == ("tpe", "median", "random", "none")
    counts = pruning.counts                                   # the running trial is left out
    assert (pruning.finished, counts["complete"], counts["pruned"], counts["fail"], counts["running"]) == \
        (5, 3, 2, 1, 0)
    assert (pruning.untimed_trials, pruning.unfinished_trials, plain.untimed_trials) == (1, 1, 0)
    # saved: each pruned trial 2 s * (100 / 10 - 1) = 18 s; 36 of 36 + 36 -> 50%
    assert (pruning.spent_seconds, pruning.saved_seconds, pruning.saved_fraction) == (36.0, 36.0, 0.5)
    assert (plain.spent_seconds, plain.saved_seconds, plain.saved_fraction) == (40.0, 0.0, 0.0)
    # the equal budget is the smaller total; "plain" found its best (the target) only after it
    assert cmp.budget_seconds == 36.0 and cmp.target_value == 0.43 and cmp.minimize
    assert (pruning.best_value, pruning.best_at_budget) == (0.435, 0.435)
    assert (plain.best_value, plain.best_at_budget) == (0.43, 0.45)
    assert (pruning.seconds_to_target, plain.seconds_to_target) == (36.0, 40.0)       # 0.435 is within 0.01
    assert seconds_to_reach(plain.curve, 0.3, minimize=True) is None
    assert best_within(pruning.curve, 35.9) == 0.8 and best_within(plain.curve, 9.9) is None
    text = verdict(cmp)
    assert "At equal budget (36.0 device-seconds" in text
    assert "tpe+median (with-pruning) 0.4350, random+none (plain) 0.4500" in text
    assert "tpe+median (with-pruning) is ahead" in text
    assert "Pruning saved 50% of tpe+median (with-pruning)'s device time" in text
    assert "random+none (plain) does not prune" in text
    assert text.endswith("tpe+median (with-pruning): met.")
    assert cmp.caveats == []                        # neither records data or fixed fields that differ


def test_compare_says_when_the_studies_values_do_not_compare():
    from mainrun.compare import compare_studies, verdict
    pruning, plain = _pruning_and_plain_studies()
    pruning.set_user_attr("titles_sha256", "a" * 64)
    plain.set_user_attr("titles_sha256", "b" * 64)
    pruning.set_user_attr("space_yaml", "fixed: {epochs: 2, mainrun_rules: false}\n")
    cmp = compare_studies([pruning, plain])
    assert len(cmp.caveats) == 2
    assert "different data" in cmp.caveats[0]
    assert "fix different run fields (epochs, mainrun_rules; epochs: 'with-pruning' 2, 'plain' '(default)')" \
        in cmp.caveats[1]
    assert verdict(cmp).startswith("The studies ran on different data")



def test_compare_says_when_the_studies_device_time_does_not_compare():
    from mainrun.compare import compare_studies

    def on(device: str, study: optuna.Study) -> optuna.Study:      # the study, every trial trained there
        trials = study.get_trials()
        for t in trials:
            t.user_attrs = {**t.user_attrs, "device": device}
        return _in_memory_study(study.study_name, study.user_attrs, trials)
    pruning, plain = _pruning_and_plain_studies()
    pruning = on("cuda:0 NVIDIA H100 80GB HBM3 (bf16)", pruning)
    assert compare_studies([pruning, on("cuda:3 NVIDIA H100 80GB HBM3 (bf16)", plain)]).caveats == []   # the index
    cmp = compare_studies([pruning, on("cuda:0 NVIDIA H200 (bf16)", plain)])
    assert cmp.caveats == ["The studies trained on different devices ('with-pruning' cuda NVIDIA H100 80GB HBM3 "
                           "(bf16); 'plain' cuda NVIDIA H200 (bf16)), so their device time, the budget they are "
                           "compared at, does not compare."]

def test_compare_pruning_goal_not_met_policy_fallbacks_and_refusals():
    from mainrun.compare import compare_studies, pruning_goal_sentence, study_policy
    from mainrun.errors import SearchError
    cmp = compare_studies(list(_pruning_and_plain_studies()))
    cmp.studies[0].best_at_budget = 0.5                  # worse than the study without pruning at 36 s
    assert pruning_goal_sentence(cmp).endswith(
        "tpe+median (with-pruning): not met (best at equal budget 0.5000 vs 0.4500 without pruning).")
    assert study_policy({}) == ("?", "?")
    assert study_policy({"space_yaml": "params: {}\n"}) == ("tpe", "median")          # the space defaults
    assert study_policy({"sampler": "random", "pruner": "hyperband", "space_yaml": "sampler: {name: tpe}\n"}) == \
        ("random", "hyperband")
    pruning, plain = _pruning_and_plain_studies()
    with pytest.raises(SearchError, match="'plain' is named more than once"):
        compare_studies([plain, pruning, plain])
    pruned = _trial(TrialState.PRUNED, 5, 1.0, train=1, prep=0, steps=1, last=1.0)
    only_pruned = _in_memory_study("only-pruned", {}, [pruned])
    with pytest.raises(SearchError, match="study 'only-pruned' has no complete trial"):
        compare_studies([plain, only_pruned])


def test_policy_labels_name_the_options_that_differ_from_the_defaults():
    from mainrun.compare import policy_label
    # recorded by mainrun-search: the policy with its options (a default value is not repeated)
    assert policy_label({"sampler": "tpe", "pruner": "median", "policy": {
        "sampler": {"name": "tpe", "n_startup_trials": 10, "multivariate": True},
        "pruner": {"name": "median", "n_warmup_steps": 6, "n_startup_trials": 5}}}) == "tpe+median(n_warmup_steps=6)"
    # an older study: the space file's options, where it names the policy the study ran
    arch = "sampler: {name: tpe, n_startup_trials: 10}\npruner: {name: median, n_warmup_steps: 6}\n"
    assert policy_label({"sampler": "tpe", "pruner": "median", "space_yaml": arch}) == "tpe+median(n_warmup_steps=6)"
    assert policy_label({"sampler": "random", "pruner": "none", "space_yaml": arch}) == "random+none"   # overridden
    assert policy_label({"space_yaml": "params: {}\n"}) == "tpe+median"                # the space defaults
    assert policy_label({"pruner": "patient", "policy": {"pruner": {"name": "patient", "patience": 5}}}) == \
        "?+patient(patience=5)"


def _search(name: str, policy: dict, bests: list[float]) -> optuna.Study:
    """A finished search whose trials each took 10 s and found `bests` in turn."""
    return _in_memory_study(name, {"sampler": policy["sampler"]["name"], "pruner": policy["pruner"]["name"],
                                   "policy": policy}, [
        _trial(TrialState.COMPLETE, 10 * (i + 1), value, train=10, prep=0, steps=100) for i, value in enumerate(bests)])


MEDIAN = {"sampler": {"name": "tpe"}, "pruner": {"name": "median"}}
PATIENT = {"sampler": {"name": "tpe"}, "pruner": {"name": "patient", "patience": 4}}


def test_repeated_searches_are_compared_by_policy():
    """Two searches of each policy: the verdict compares policies by their searches' spread at the
    equal budget (30 s, the shortest search), and calls one ahead only where every search of it
    beat every search of the other."""
    from mainrun.compare import compare_studies, verdict
    separated = compare_studies([_search("m0", MEDIAN, [1.0, 0.9, 0.8]), _search("p0", PATIENT, [1.0, 0.95, 0.85, 0.5]),
                                 _search("m1", MEDIAN, [0.7, 0.9, 0.82]), _search("p1", PATIENT, [0.9, 0.9, 0.88])])
    assert separated.budget_seconds == 30.0 and separated.repeated
    assert [(g.policy, [r.name for r in g.studies], g.values) for g in separated.groups] == [
        ("tpe+median", ["m0", "m1"], [0.8, 0.7]), ("tpe+patient(patience=4)", ["p0", "p1"], [0.85, 0.88])]
    text = verdict(separated)
    assert "By policy, at that budget: tpe+median mean 0.7500 over 2 searches (0.7000 to 0.8000); " \
           "tpe+patient(patience=4) mean 0.8650 over 2 searches (0.8500 to 0.8800)." in text
    assert "Every tpe+median search was ahead of every tpe+patient(patience=4) search." in text
    # what pruning saved, once per policy (these hand-built searches pruned nothing)
    assert "Pruning saved, of each search's device time, by policy: tpe+median 0% and 0%; " \
           "tpe+patient(patience=4) 0% and 0%." in text and "saved nothing by pruning" not in text
    # p0's 0.5 came after the budget: it does not count; with p1 at 0.75 the policies overlap
    overlapping = compare_studies([_search("m0", MEDIAN, [1.0, 0.9, 0.8]), _search("p0", PATIENT, [1.0, 0.95, 0.85]),
                                   _search("m1", MEDIAN, [0.7, 0.9, 0.82]), _search("p1", PATIENT, [0.9, 0.75])])
    assert "The searches of tpe+median and tpe+patient(patience=4) overlap: 2 and 2 searches do not rank these " \
           "two policies." in verdict(overlapping)
    # the plots draw a policy in one colour, its searches in different dashes
    from mainrun.compare import comparison_figure, line_styles
    assert line_styles(separated) == {"m0": (0, "solid"), "m1": (0, "dash"), "p0": (1, "solid"), "p1": (1, "dash")}
    lines = {t.name: t.line for t in comparison_figure(separated).data}
    assert lines["tpe+median (m0)"].color == lines["tpe+median (m1)"].color != lines["tpe+patient (p0)"].color
    assert (lines["tpe+median (m0)"].dash, lines["tpe+median (m1)"].dash) == ("solid", "dash")
    # one search per policy: a number, and the warning that it rests on one search
    single = verdict(compare_studies([_search("m0", MEDIAN, [0.8]), _search("p0", PATIENT, [0.9])]))
    assert "Each policy here rests on one search" in single and "By policy" not in single
    # a search with no complete trial by the budget counts as such, not as a value
    p1 = _in_memory_study("p1", {"sampler": "tpe", "pruner": "patient", "policy": PATIENT}, [
        _trial(TrialState.PRUNED, 10, 0.5, train=10, prep=0, steps=10, last=0.5),
        _trial(TrialState.COMPLETE, 20, 0.7, train=10, prep=0, steps=100)])
    late = verdict(compare_studies([_search("m0", MEDIAN, [0.8]), _search("p0", PATIENT, [0.9]), p1]))
    assert "tpe+patient(patience=4) 0.9000 (1 of 2 searches with a complete trial by then)" in late
    # one policy searched twice: its spread, and nothing to rank
    spread = verdict(compare_studies([_search("m0", MEDIAN, [0.8]), _search("m1", MEDIAN, [0.7])]))
    assert "By policy, at that budget: tpe+median mean 0.7500 over 2 searches (0.7000 to 0.8000)." in spread
    assert "ahead of every" not in spread and "rests on one search" not in spread


def test_searches_of_one_policy_in_different_spaces_are_not_repeats():
    """Same policy, other params: two policies named by their space files, not one searched
    twice. A space that differs only in its comments, policy or enqueued configs is the same."""
    from mainrun.compare import compare_studies
    arch = "params:\n  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
    studies = [_search(name, MEDIAN, [value]) for name, value in (("a0", 0.8), ("a1", 0.7), ("b0", 0.9), ("c0", 0.6))]
    for study, (file, text) in zip(studies, (("spaces/arch.yaml", arch),
                                             ("spaces/arch.yaml", "# a comment\n" + arch + "enqueue: [baseline]\n"),
                                             ("optim.yaml", arch.replace("1.0e-2", "3.0e-2")),
                                             ("old/arch.yaml", arch + "fixed: {dropout: 0.0}\n"))):
        study.set_user_attr("space_file", file)
        study.set_user_attr("space_yaml", text)
    cmp = compare_studies(studies)
    assert [(g.policy, [r.name for r in g.studies]) for g in cmp.groups] == [
        ("tpe+median on arch #1", ["a0", "a1"]), ("tpe+median on optim", ["b0"]), ("tpe+median on arch #2", ["c0"])]
    same = compare_studies(studies[:2])
    assert [g.policy for g in same.groups] == ["tpe+median"] and same.repeated


# ---------------------------------------------------------------------- comparing studies: the real CLI
RANDOM_STUDY = "smoke-random"


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A copy of the shared smoke study's database (tpe + percentile pruning) plus a second study
    made by the real mainrun-search with --sampler random --pruner none; then mainrun-report
    --compare on both. Returns (out folder, process, storage URL, the two studies)."""
    shared, _ = smoke_study(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("compare")
    shutil.copy(shared / "study.db", tmp / "study.db")
    url = f"sqlite:///{tmp / 'study.db'}"
    search = subprocess.run(cli("mainrun-search", "--space", str(shared / "space.yaml"), "--storage", url,
                                "--sampler", "random", "--pruner", "none",
                                "--trials", "3", "--dataset", str(shared / "titles.txt"), "--study", RANDOM_STUDY,
                                "--seed", "3"),
                            capture_output=True, text=True, cwd=tmp, env=env(shared), timeout=600)
    assert search.returncode == 0, search.stdout + search.stderr
    out = tmp / "cmp"
    proc = subprocess.run(cli("mainrun-report", "--compare", STUDY, RANDOM_STUDY, "--storage", url, "--out", str(out)),
                          capture_output=True, text=True, cwd=tmp, env=env(shared), timeout=300)
    studies = [optuna.load_study(study_name=name, storage=url) for name in (STUDY, RANDOM_STUDY)]
    return out, proc, url, studies


def test_compare_cli_writes_a_self_contained_page_and_a_png(compared):
    out, proc, _, (pruning, plain) = compared
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"report: {out / 'compare.html'}"
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert external_references(page) == [] and page.count("* plotly.js v") == 1
    assert 'id="plot-compare"' in page and "href='compare.png'" in page
    png = (out / "compare.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000
    table = re.search(r"<table id='comparison'>(.*?)</table>", page, re.S).group(1)
    rows = {cells[0]: cells for cells in (re.findall(r"<td[^>]*>([^<]*)</td>", row)
                                          for row in re.findall(r"<tr>(<td.*?)</tr>", table))}
    assert set(rows) == {STUDY, RANDOM_STUDY}
    for study, policy in ((pruning, ["tpe", "percentile"]), (plain, ["random", "none"])):
        row, trials = rows[study.study_name], study.get_trials()
        n = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        spent = sum(t.user_attrs.get("train_seconds", 0) + t.user_attrs.get("prep_seconds", 0) for t in trials)
        assert row[1:7] == policy + [str(n[TrialState.COMPLETE] + n[TrialState.PRUNED]), str(n[TrialState.COMPLETE]),
                                     str(n[TrialState.PRUNED]), str(n[TrialState.FAIL])]
        assert float(row[7].replace(",", "")) == pytest.approx(spent, abs=0.51)          # 1 decimal below 100 s
        assert row[10] == f"{study.best_value:.4f}"
    assert rows[RANDOM_STUDY][8:10] == ["0.0", "0%"] and rows[STUDY][9] != "0%"    # the smoke study pruned
    verdict = html.unescape(re.search(r"<p id='verdict'>(.*?)</p>", page, re.S).group(1))
    assert verdict.startswith("At equal budget (") and f"random+none ({RANDOM_STUDY}) does not prune" in verdict
    assert f"Pruning saved {rows[STUDY][9]} of tpe+percentile ({STUDY})'s device time" in verdict


def test_compare_cli_refusals_exit_2(compared, tmp_path, capsys):
    from mainrun.cli import report_main
    _, _, url, _ = compared
    out = tmp_path / "r"
    usage = {("--study", STUDY, "--compare", STUDY, RANDOM_STUDY): "not allowed with argument",
             ("--compare", STUDY): "--compare needs at least 2 study names",
             ("--compare", STUDY, RANDOM_STUDY, STUDY): f"study '{STUDY}' is named more than once",
             ("--compare", STUDY, "nope"): "no study 'nope'",
             (): "one of the arguments --study --compare is required"}
    for args, words in usage.items():
        with pytest.raises(SystemExit) as exit_:
            report_main([*args, "--storage", url, "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and words in err, (args, err)
    # the real entry point: a message, no traceback
    proc = subprocess.run(cli("mainrun-report", "--compare", STUDY, "nope", "--storage", url, "--out", str(out)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no study 'nope'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_recorded_space_is_read_with_the_strict_loader():
    """The study's recorded space file is read as every mainrun YAML is: a duplicate key or an alias
    is not guessed at (safe_load would take the last of two samplers), so the policy is unknown."""
    from mainrun.compare import study_policy
    assert study_policy({"space_yaml": "sampler: {name: random}\nsampler: {name: tpe}\n"}) == ("?", "?")
    assert study_policy({"space_yaml": "base: &b {name: random}\nsampler: *b\n"}) == ("?", "?")
    assert study_policy({"space_yaml": "sampler: {name: random}\n"}) == ("random", "median")
