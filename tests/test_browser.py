"""A real headless Chromium looks at what people look at: the optuna-dashboard study page of a
study made by mainrun-search (its intermediate-values chart rendered), and the mainrun-report page
opened from disk with every host name unresolvable (its plotly charts rendered, no request made).

Needs Debian's `chromium` (apt-get install chromium): skipped without it, failed in CI (CI=...).
Screenshots are kept under $MAINRUN_TEST_ARTIFACTS (default tests/artifacts)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import ROOT, cli
from test_report import PNG_MAGIC, STUDY, report, smoke_study

VIRTUAL_TIME_MS = 15000
# the plot divs of a report page in page order (plot-importance only with enough complete trials,
# plot-confirmed only when the study has a confirmation)
REPORT_PLOTS = ("plot-history", "plot-intermediate", "plot-curves", "plot-importance", "plot-parallel",
                "plot-confirmed")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run must `apt-get install chromium`")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def artifacts() -> Path:
    path = Path(os.environ.get("MAINRUN_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def browse(url: str, workdir: Path, name: str, *, screenshot: Path | None = None, offline: bool = False,
           window: str = "1400,1000") -> tuple[str, Path]:
    """Load `url` in headless Chromium, let its scripts run for VIRTUAL_TIME_MS of virtual time and
    return (the rendered DOM, the net log). With `screenshot`, take one instead of dumping the DOM
    (Chromium does one or the other per run). `offline`: every host name fails to resolve."""
    profile = workdir / f"profile-{name}"
    netlog = workdir / f"netlog-{name}.json"
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--virtual-time-budget={VIRTUAL_TIME_MS}", f"--window-size={window}",
            f"--log-net-log={netlog}"]
    if offline:
        argv.append("--host-resolver-rules=MAP * ~NOTFOUND")
    argv += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*argv, url], capture_output=True, text=True, timeout=180, cwd=workdir)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    if screenshot:
        data = screenshot.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000, f"empty screenshot {screenshot}"
    return proc.stdout, netlog


def page_requests(netlog: Path) -> list[str]:
    """http(s) requests the page made (Chromium's own update/account pings are 'not an origin')."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start and e.get("params", {}).get("url", "").startswith(("http:", "https:"))
            and e["params"].get("initiator") != "not an origin"]


def section(dom: str, element_id: str, ends: tuple[str, ...]) -> str:
    """The DOM from the element with this id to the next of `ends` (the next card or plot)."""
    start = dom.rindex("<", 0, dom.index(f'id="{element_id}"'))            # the element's own tag
    stops = [i for i in (dom.find(e, start + 1) for e in ends) if i > 0]
    return dom[start:min(stops, default=len(dom))]


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


# ---------------------------------------------------------------------- (a) optuna-dashboard
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_renders_the_study_page_with_intermediate_values(tmp_path_factory, tmp_path, artifacts):
    chromium()
    tmp, url = smoke_study(tmp_path_factory)
    import optuna
    study = optuna.load_study(study_name=STUDY, storage=url)
    with_curves = [t.number for t in study.trials if t.intermediate_values]
    pruned = [t.number for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and len(with_curves) == 6

    port = _free_port()
    log = (tmp_path / "dashboard.log").open("w")
    dash = subprocess.Popen(cli("optuna-dashboard", url, "--host", "127.0.0.1", "--port", str(port),
                                "--artifact-dir", str(tmp / "artifacts")), stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as r:
                    summaries = json.loads(r.read())["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline and dash.poll() is None, \
                    "optuna-dashboard did not start:\n" + (tmp_path / "dashboard.log").read_text()
                time.sleep(0.5)
        study_id = next(s["study_id"] for s in summaries if s["study_name"] == STUDY)
        page = f"{base}/dashboard/studies/{study_id}"

        dom, _ = browse(page, tmp_path, "dashboard")
        text = visible_text(dom)
        assert f"{STUDY} (id={study_id})" in text, text[:2000]          # the study page, not the list
        assert "History" in text and "Intermediate values" in text
        chart = section(dom, "graph-intermediate-values", ("<h6",))
        assert "js-plotly-plot" in chart and 'class="main-svg"' in chart, chart[:2000]
        # one rendered line per trial, pruned ones included, each named in the legend
        legend = {int(n) for n in re.findall(r'data-unformatted="trial #(\d+)', chart)}
        assert legend == set(with_curves), (legend, with_curves)
        lines = re.findall(r'class="js-line" d="M[^"]+"', chart)
        assert len(lines) >= 2 * len(with_curves)                          # plot lines + legend swatches

        # tall enough to show the intermediate-values card below history, importance and attributes
        browse(page, tmp_path, "dashboard-shot", screenshot=artifacts / "dashboard-study.png", window="1400,2400")
    finally:
        dash.terminate()
        dash.wait(timeout=30)
        log.close()


# ---------------------------------------------------------------------- (b) the report, from disk
def test_report_renders_offline_in_chromium(tmp_path_factory, tmp_path, artifacts):
    chromium()
    out, proc = report(tmp_path_factory)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    index = out / "index.html"
    source = index.read_text(encoding="utf-8")
    plots = [p for p in REPORT_PLOTS if f'id="{p}"' in source]
    assert {"plot-history", "plot-intermediate", "plot-curves", "plot-parallel"} <= set(plots)

    dom, netlog = browse(index.as_uri(), tmp_path, "report", offline=True)
    assert page_requests(netlog) == []                                     # nothing fetched, not even tried
    dom = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)            # what the scripts built, not their text
    assert dom.count("js-plotly-plot") == len(plots)
    for plot in plots:
        part = section(dom, plot, tuple(f'id="{p}"' for p in REPORT_PLOTS if p != plot))
        opening = part[:part.index(">")]
        assert "js-plotly-plot" in opening, (plot, opening)                # plotly.js took the div
        assert 'class="main-svg"' in part and 'class="trace ' in part, plot  # and drew traces into it
    legend = set(re.findall(r'class="legendtext"[^>]*data-unformatted="([^"]*)"',
                            section(dom, "plot-intermediate", ('id="plot-curves"',))))
    assert "pruned trials" in legend and "complete trials" in legend, legend
    assert any(name.startswith(("best (trial", "best = baseline")) for name in legend), legend
    assert any(name.startswith("baseline (trial 0)") for name in legend) or \
        any(name.startswith("best = baseline") for name in legend), legend
    assert not re.search(r'(src|href)="(https?:)?//', dom)                 # no outside link was built either

    browse(index.as_uri(), tmp_path, "report-shot", screenshot=artifacts / "report.png", offline=True,
           window="1400,3600")
