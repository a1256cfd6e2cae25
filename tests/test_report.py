"""mainrun-report: a real smoke study made by the real CLI, then the report read back: its files,
its numbers, its best config, and that the page references nothing outside itself."""
from __future__ import annotations

import html
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from helpers import SPACES, cli, make_titles
from mainrun.config import RunConfig

STUDY = "smoke-report"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BUILT: dict[str, tuple[Path, str]] = {}


# ---------------------------------------------------------------------- the shared study
def env(tmp: Path) -> dict[str, str]:
    """A private tokenizer cache and no hub access, for the CLI subprocesses (module-scoped
    fixtures run before the autouse per-test cache fixture)."""
    return {**os.environ, "MAINRUN_CACHE_DIR": str(tmp / "cache"), "HF_DATASETS_CACHE": str(tmp / "hf"),
            "HF_HUB_OFFLINE": "1"}


def smoke_study(tmp_path_factory) -> tuple[Path, str]:
    """A 6-trial smoke search (aggressive pruner, the enqueued first trial labelled as the
    baseline) made by the real mainrun-search; built once per test session and shared with
    test_browser.py. Returns (folder, storage URL)."""
    if "study" in _BUILT:
        return _BUILT["study"]
    tmp = tmp_path_factory.mktemp("report-study")
    (tmp / "titles.txt").write_text("\n".join(make_titles(1500)) + "\n")
    space = yaml.safe_load((SPACES / "smoke.yaml").read_text())
    space["pruner"] = {"name": "percentile", "percentile": 10.0, "n_startup_trials": 1, "n_warmup_steps": 0}
    # the smoke space's enqueued point, named as the baseline preset (overridden to fit the space)
    space["enqueue"] = [{"preset": "baseline", **space["enqueue"][0]}]
    (tmp / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    url = f"sqlite:///{tmp / 'study.db'}"
    proc = subprocess.run(cli("mainrun-search", "--space", str(tmp / "space.yaml"), "--storage", url,
                              "--trials", "6", "--dataset", str(tmp / "titles.txt"), "--study", STUDY,
                              "--seed", "6"),   # 4 complete (baseline, best and two more), 2 pruned
                          capture_output=True, text=True, cwd=tmp, env=env(tmp), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _BUILT["study"] = (tmp, url)
    return _BUILT["study"]


def report(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """mainrun-report on the shared study, once per session. Returns (out folder, process)."""
    if "report" not in _BUILT:
        tmp, url = smoke_study(tmp_path_factory)
        out = tmp / "report"
        proc = subprocess.run(cli("mainrun-report", "--study", STUDY, "--storage", url, "--out", str(out)),
                              capture_output=True, text=True, cwd=tmp, env=env(tmp), timeout=300)
        _BUILT["report"] = (out, proc)
    return _BUILT["report"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp, url = smoke_study(tmp_path_factory)
    out, proc = report(tmp_path_factory)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name=STUDY, storage=url)
    return out, proc, study, (out / "index.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------- what a page may reference
class _Refs(HTMLParser):
    """Every URL-valued attribute of every element, the text of <style> blocks and the
    <script src> tags; script bodies are data, not markup, so strings in plotly.js are not read."""
    URL_ATTRS = {"src", "href", "action", "formaction", "data", "poster", "srcset", "background", "manifest"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self.scripts_with_src: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value and (key in self.URL_ATTRS or (key == "style" and "url(" in value)):
                self.refs.append((tag, key, value))
            if tag == "script" and key == "src":
                self.scripts_with_src.append(value or "")
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def external_references(page: str) -> list[str]:
    parser = _Refs()
    parser.feed(page)
    bad = [f"<{tag} {key}={value!r}>" for tag, key, value in parser.refs
           if re.search(r"(^\s*|url\(\s*['\"]?)(https?:)?//", value, re.I)]
    bad += [f"<script src={s!r}>" for s in parser.scripts_with_src]
    for css in parser.styles:
        bad += [f"<style> {m}" for m in re.findall(r"@import[^;]*|@font-face|url\([^)]*\)", css, re.I)]
    return bad


def expected_totals(study: optuna.Study) -> tuple[float, float]:
    """GPU(CPU)-seconds spent and saved, by the README's formula, from the raw trials: a pruned
    trial would have spent its time after setup per step on each step it did not run."""
    trials = study.get_trials()
    spent = sum(t.user_attrs.get("train_seconds", 0) + t.user_attrs.get("prep_seconds", 0) for t in trials)
    saved = 0.0
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        a = t.user_attrs
        if a["steps"] > 1:
            saved += (a["train_seconds"] - a["setup_seconds"]) / (a["steps"] - 1) * (a["max_steps"] - a["steps"])
        else:
            saved += a["train_seconds"] * (a["max_steps"] - 1)
    return spent, saved


# ---------------------------------------------------------------------- the report of the smoke study
def test_report_writes_the_page_and_png_copies(built):
    out, proc, study, page = built
    index = out / "index.html"
    assert proc.stdout.strip().splitlines()[-1] == f"report: {index}"
    assert "Traceback" not in proc.stderr
    n_complete = len(study.get_trials(states=(TrialState.COMPLETE,)))
    pngs = {p.name for p in out.glob("*.png")}
    assert {"history.png", "intermediate_values.png", "parallel_coordinate.png"} <= pngs
    assert ("importances.png" in pngs) == (n_complete >= 5)
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 10_000, name                           # a drawn plot, not an empty canvas
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 800 and height >= 500, (name, width, height)
        assert f"href='{name}'" in page                           # linked from the page, relatively


def test_report_shows_the_study_best_config_and_top_trials(built):
    _, _, study, page = built
    best = study.best_trial
    assert f"<title>mainrun report: {STUDY}</title>" in page
    assert f"{best.value:.4f}" in page and f"{best.value:.6f}" in page
    # the best config, as YAML, is exactly the best trial's recorded config
    block = re.search(r"<pre id='best-config'>(.*?)</pre>", page, re.S).group(1)
    assert yaml.safe_load(html.unescape(block)) == best.user_attrs["config"]
    assert f"mainrun-export --study {STUDY}" in page
    # the top-trials table: every complete trial (fewer than 10), best first, with its user attrs
    table = page[page.index("<h2>Top trials</h2>"):page.index("<h2>All trials</h2>")]
    rows = re.findall(r"<tr class='(\w+)'><td>(\d+)</td><td>(\d+)</td><td>([\d.]+)</td>", table)
    complete = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    assert [int(r[2]) for r in rows] == [t.number for t in complete]
    assert rows[0][0] == "best"
    for t in complete:
        a = t.user_attrs
        assert f"{a['train_seconds']:.1f}" in table and f"{a['tokens_per_second']:,}" in table
        n = a["n_params"]
        assert f"<td>{n / 1e6:.1f}M</td>" in table if n >= 1e6 else f"<td>{n:,}</td>" in table
    assert "<th>lr</th>" in table and "<th>head_dim</th>" in table and "<th>peak MiB</th>" in table


def test_report_highlights_the_baseline_and_best_and_marks_pruned_curves(built):
    _, _, study, page = built
    baseline = study.trials[0]
    assert baseline.user_attrs["enqueued_as"] == "baseline"
    best = study.best_trial
    assert 'id="plot-intermediate"' in page and 'id="plot-history"' in page and 'id="plot-parallel"' in page
    # trace names and styles are in the figure JSON that plotly.js renders
    assert f"best (trial {best.number}): {best.value:.4f}" in page or \
        f"best = baseline (trial {best.number}): {best.value:.4f}" in page
    if best.number != baseline.number:
        assert f"baseline (trial {baseline.number}): {baseline.value:.4f}" in page
    assert '"name":"pruned trials"' in page and '"dash":"dot"' in page
    assert '"name":"complete trials"' in page
    n_complete = len(study.get_trials(states=(TrialState.COMPLETE,)))
    if n_complete < 5:
        assert "Parameter importances need at least 5 complete trials" in page
    else:
        assert 'id="plot-importance"' in page


def test_report_totals(built):
    _, _, study, page = built
    counts = {s: len(study.get_trials(states=(s,))) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    assert counts[TrialState.PRUNED] >= 1
    cards = dict((k, v) for v, k in re.findall(r"<div class='v'>([^<]*)</div><div class='k'>([^<]*)</div>", page))
    assert cards["trials"] == "6"
    assert cards["complete"] == str(counts[TrialState.COMPLETE])
    assert cards["pruned"] == str(counts[TrialState.PRUNED])
    assert cards["failed"] == str(counts[TrialState.FAIL])
    spent, saved = expected_totals(study)
    assert cards["CPU-seconds spent (train + prep)"] == f"{spent:,.0f}"          # a CPU study: CPU-seconds
    assert cards["CPU-seconds saved by pruning (estimate)"] == f"{saved:,.0f}"
    assert saved > 0


def test_report_is_self_contained(built):
    _, _, _, page = built
    assert external_references(page) == []
    assert page.count("* plotly.js v") == 1                       # plotly.js inlined, once
    assert "@font-face" not in page and "fonts.googleapis" not in page


def test_the_reference_check_catches_what_it_should():
    for bad in ("<script src='https://cdn.plot.ly/plotly.min.js'></script>",
                "<link rel='stylesheet' href='//fonts.googleapis.com/css?family=Roboto'>",
                "<img src='http://example.com/x.png'>", "<style>@import url(https://x/y.css);</style>",
                "<div style=\"background: url('https://x/y.png')\"></div>", "<script src='plotly.js'></script>"):
        assert external_references(f"<html><body>{bad}</body></html>"), bad
    ok = "<a href='history.png'>x</a><script>var s = '<a href=\"https://plotly.com/\">';</script>"
    assert external_references(ok) == []


def test_unknown_study_or_storage_exits_2_and_creates_nothing(built, tmp_path):
    out, _, _, _ = built
    url = f"sqlite:///{out.parent / 'study.db'}"
    cases = {("--study", "nope", "--storage", url): "no study 'nope'",
             ("--study", STUDY, "--storage", f"sqlite:///{tmp_path / 'missing' / 'x.db'}"): "no study database",
             ("--study", STUDY, "--storage", "postgresql+psycopg://u:s3cr3t@127.0.0.1:9/x"): "cannot read studies"}
    for args, words in cases.items():
        proc = subprocess.run(cli("mainrun-report", *args, "--out", str(tmp_path / "r")),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert "s3cr3t" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r").exists() and not (tmp_path / "missing").exists()
    (tmp_path / "a-file").write_text("")
    proc = subprocess.run(cli("mainrun-report", "--study", STUDY, "--storage", url, "--out", str(tmp_path / "a-file" / "r")),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cannot create it" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------- in-process, on a made-up study
def _made_up_study(url: str, batch_of_pruned: int = 64) -> optuna.Study:
    """A GPU-like study written directly with Optuna: a baseline, complete and pruned trials with
    the user attrs mainrun-search records, one failed trial."""
    study = optuna.create_study(study_name="made-up", storage=url, direction="minimize")
    study.set_metric_names(["val_loss"])
    study.enqueue_trial({"lr": 6e-3, "opt": "sgd"}, user_attrs={"enqueued_as": "baseline"})
    for i in range(10):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                           "opt": optuna.distributions.CategoricalDistribution(["sgd", "adamw"])})
        pruned, failed = i in (3, 6, 8), i == 9
        level = 1.0 + abs(trial.params["lr"] - 3e-3) * 20 + (0.3 if trial.params["opt"] == "sgd" else 0)
        evals = 3 if pruned else 22
        for k in range(evals):
            trial.report(level + 1.0 / (k + 1), k)
        batch = batch_of_pruned if pruned else 64
        steps = 924 * 64 // batch
        trial.set_user_attr("config", {"lr": trial.params["lr"], "optimizer": trial.params["opt"],
                                       "batch_size": batch, "block_size": 128, "epochs": 7})
        if failed:
            study.tell(trial, state=TrialState.FAIL)
            continue
        ran = 132 * 64 // batch if pruned else steps
        for key, value in {"train_seconds": ran / 10.0, "prep_seconds": 5.0, "steps": ran, "n_params": 27_172_864,
                           "tokens_per_second": 200_000 + i, "peak_memory_mb": 2931.3, "device": "cuda (bf16)"}.items():
            trial.set_user_attr(key, value)
        if pruned:
            trial.set_user_attr("prune_reason", "pruned at evaluation 2 (step 132)")
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, level + 1.0 / evals)
    return study


def test_made_up_study_importances_and_the_saving_estimate(tmp_path):
    from mainrun.report import build_report
    url = f"sqlite:///{tmp_path / 'm.db'}"
    # the pruned trials ran at batch 32: twice the steps per epoch of the complete ones (batch 64)
    study = _made_up_study(url, batch_of_pruned=32)
    index = build_report(url, "made-up", tmp_path / "out")
    page = index.read_text()
    assert (tmp_path / "out" / "importances.png").read_bytes()[:8] == PNG_MAGIC
    assert 'id="plot-importance"' in page and "Hyperparameter Importances" in page
    cards = dict((k, v) for v, k in re.findall(r"<div class='v'>([^<]*)</div><div class='k'>([^<]*)</div>", page))
    assert (cards["complete"], cards["pruned"], cards["failed"]) == ("6", "3", "1")
    spent = sum(t.user_attrs.get("train_seconds", 0) + t.user_attrs.get("prep_seconds", 0) for t in study.trials)
    assert cards["GPU-seconds spent (train + prep)"] == f"{spent:,.0f}"
    # each pruned trial: 264 of 1848 steps (batch 32) in 26.4 s -> 26.4 * (1848 / 264 - 1) = 158.4 s saved
    assert cards["GPU-seconds saved by pruning (estimate)"] == f"{3 * 158.4:,.0f}"
    assert "baseline (trial 0)" in page


def test_made_up_study_without_a_complete_trial_still_reports(tmp_path):
    from mainrun.report import build_report
    url = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(study_name="none-yet", storage=url)
    trial = study.ask()
    trial.report(2.0, 0)
    study.tell(trial, state=TrialState.PRUNED)
    page = build_report(url, "none-yet", tmp_path / "out").read_text()
    assert "No complete trial yet." in page and "Parameter importances need at least" in page
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["intermediate_values.png"]


def test_a_study_without_pruned_trials_says_pruning_saved_nothing(tmp_path):
    from mainrun.report import build_report
    url = f"sqlite:///{tmp_path / 'n.db'}"
    study = optuna.create_study(study_name="unpruned", storage=url)
    for value in (2.0, 1.5):
        trial = study.ask()
        trial.report(value + 0.5, 0)
        trial.set_user_attr("train_seconds", 10.0)
        trial.set_user_attr("steps", 924)
        study.tell(trial, value)
    page = build_report(url, "unpruned", tmp_path / "out").read_text()
    assert "No trial was pruned, so pruning saved nothing." in page and "Saved by pruning" not in page


def test_the_saving_estimate_pays_setup_once_and_uses_each_trials_own_full_length(tmp_path):
    from mainrun.report import build_report, compute_totals
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="setup", storage=url)

    def add(state, **attrs):
        trial = study.ask()
        trial.report(2.0, 0)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, 1.5 if state == TrialState.COMPLETE else None, state=state)

    # pruned after 101 of 1001 steps in 30 s, 10 s of it setup (capture/compile, step 1, its scoring):
    # the other 900 steps would have taken (30 - 10) / 100 * 900 = 180 s, not 30 * (1001 / 101 - 1) = 267 s
    add(TrialState.PRUNED, steps=101, max_steps=1001, train_seconds=30.0, setup_seconds=10.0)
    totals = compute_totals(study.get_trials())
    assert totals.saved_seconds == pytest.approx(180.0)          # no complete trial needed: max_steps says it
    # recorded before setup_seconds and max_steps existed: the whole time scales, to a complete trial's steps
    add(TrialState.COMPLETE, steps=1001, train_seconds=100.0)
    add(TrialState.PRUNED, steps=101, train_seconds=30.0)
    totals = compute_totals(study.get_trials())
    assert totals.saved_seconds == pytest.approx(180.0 + 30.0 * (1001 / 101 - 1))
    page = build_report(url, "setup", tmp_path / "out").read_text()
    assert "(train_seconds − setup_seconds) / (steps − 1)" in page


def test_what_a_trial_records_is_text_on_the_page_never_markup(tmp_path):
    """A study is data from elsewhere (another machine's worker, a copied database): a device name
    holding a script tag must show as text in the totals, not run when the report is opened."""
    from mainrun.report import build_report
    url = f"sqlite:///{tmp_path / 'i.db'}"
    study = optuna.create_study(study_name="inject", storage=url)
    for value in (2.0, 1.5):
        trial = study.ask()
        trial.report(value + 0.5, 0)
        trial.set_user_attr("device", "<script>alert('device')</script>")
        trial.set_user_attr("train_seconds", 10.0)
        study.tell(trial, value)
    page = build_report(url, "inject", tmp_path / "out").read_text()
    assert "<script>alert(" not in page
    assert "devices: &lt;script&gt;alert(" in page


# ---------------------------------------------------------------------- training curves and edges
def _curves(level: float, lr: float, steps: int = 96) -> dict:
    reads = list(range(32, steps + 1, 32))
    return {"train": [[s, level + 3 / s] for s in reads], "val": [[1, level + 1.0], [steps, level]],
            "lr": [[s, lr * (1 - s / (steps + 1))] for s in reads]}


def _study_with_curves(url: str) -> optuna.Study:
    """A study as mainrun-search records one: its space file's text, trials with their config
    and curves; trial 2 (the best) at the top of the d_model values, trial 3 from an older
    mainrun without curves."""
    space = ("params:\n  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n  d_model: {values: [256, 512, 1024]}\n"
             "  dropout: {low: 0.0, high: 0.2}\n")
    study = optuna.create_study(study_name="curves", storage=url, direction="minimize")
    study.set_user_attr("space_yaml", space)
    study.set_user_attr("space_file", "space.yaml")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "d_model": optuna.distributions.CategoricalDistribution([256, 512, 1024]),
             "dropout": optuna.distributions.FloatDistribution(0.0, 0.2)}
    for number, (lr, d_model, dropout, value) in enumerate(
            [(6e-3, 512, 0.1, 1.5), (1e-3, 256, 0.1, 1.4), (2e-3, 1024, 0.0, 1.2), (3e-3, 512, 0.1, 1.3)]):
        trial = study.ask(dists)
        config = {**RunConfig().to_dict(), "lr": lr, "d_model": d_model, "n_head": 8, "dropout": dropout}
        trial.set_user_attr("config", config)
        if number == 0:
            trial.set_user_attr("enqueued_as", "baseline")
        if number != 3:
            trial.set_user_attr("curves", _curves(value, lr))
        study.tell(trial, value)
    return study


def test_the_report_draws_the_training_curves_of_the_best_the_baseline_and_asked_trials(tmp_path):
    from mainrun.report import build_report
    url = f"sqlite:///{tmp_path / 'c.db'}"
    _study_with_curves(url)
    page = build_report(url, "curves", tmp_path / "out", curve_trials=[1, 3]).read_text()
    section = page[page.index("<h2>Training curves</h2>"):]
    section = section[:section.index("<h2>", 5)]
    for label in ("best (trial 2)", "baseline (trial 0)", "trial 1"):
        assert f'"name":"{label}"' in section, label
    assert "trial 3 recorded no training curves" in section            # said, not silently left out
    # three panels on one step axis: losses, then the lr on its own
    assert '"yaxis3"' in section and "learning rate" in section and "train loss (per token)" in section
    png = (tmp_path / "out" / "curves.png").read_bytes()
    assert png[:8] == PNG_MAGIC and "href='curves.png'" in page


def test_the_report_names_the_best_configs_params_at_the_edge_of_the_space(tmp_path):
    from mainrun.report import build_report
    url = f"sqlite:///{tmp_path / 'e.db'}"
    _study_with_curves(url)
    page = build_report(url, "curves", tmp_path / "out").read_text()
    edges = page[page.index("id='edges'"):]
    edges = edges[:edges.index("</ul>")]
    # d_model 1024 is the last of its values; dropout 0 is the field's own bound, not an edge
    assert re.findall(r"<li>([^<]*)</li>", edges) == ["d_model 1024 is the top of its range: widen it"]


def test_an_unknown_trial_for_the_curves_exits_2(tmp_path, capsys):
    from mainrun.cli import report_main
    url = f"sqlite:///{tmp_path / 'u.db'}"
    _study_with_curves(url)
    with pytest.raises(SystemExit) as exit_:
        report_main(["--study", "curves", "--storage", url, "--out", str(tmp_path / "out"), "--trial", "9"])
    assert exit_.value.code == 2 and "--trial 9: study 'curves' has no such trial" in capsys.readouterr().err
