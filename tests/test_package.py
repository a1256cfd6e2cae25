"""The package as a whole: importing a module changes nothing process-wide, and an installed
(non-editable) package carries its page templates."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

# In a fresh interpreter: the third-party libraries first (what they set is theirs), then the
# state a library must leave alone, then every mainrun module, one at a time.
IMPORT_EVERY_MODULE = """
import importlib, logging, os, pkgutil, signal, warnings
import numpy, optuna, torch, yaml
import torch._dynamo      # model.py marks attention uncompiled (torch.compiler.disable), which loads dynamo and sympy
import mainrun

def state():
    loggers = {name: (logger.level, [repr(f) for f in logger.filters])
               for name, logger in logging.root.manager.loggerDict.items() if isinstance(logger, logging.Logger)}
    return {"warnings.filters": repr(warnings.filters), "optuna verbosity": optuna.logging.get_verbosity(),
            "logger filters": {k: v for k, v in loggers.items() if v[1]}, "optuna loggers": {k: v for k, v in loggers.items() if k.startswith("optuna")},
            "signals": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)],
            "threads": torch.get_num_threads(), "environ": dict(os.environ)}

first = ["mainrun.report"] + sorted(m.name for m in pkgutil.walk_packages(mainrun.__path__, "mainrun."))
for name in first:
    before = state()
    importlib.import_module(name)
    after = state()
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"importing {name} changed {changed}: " + "; ".join(f"{before[k]!r} -> {after[k]!r}" for k in changed)[:3000]
print("ok", len(first))
"""


def test_importing_a_module_changes_no_process_wide_setting():
    """Importing mainrun.report (or any module) must leave warning filters, optuna's log level,
    logging filters, signal handlers, torch's threads and the environment as they were: a worker or
    an entry point sets what it needs when it starts."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_an_installed_package_finds_its_page_templates(tmp_path):
    """The report's templates are package data: a wheel built from the sources holds them, and
    mainrun installed from it (not this editable checkout) renders a page with them."""
    import zipfile

    from helpers import ROOT
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mainrun", source / "mainrun", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("mainrun-*.whl"))
    templates = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("mainrun/templates/")}
    assert templates == {f"mainrun/templates/{n}" for n in ("page.html.j2", "page.css", "report.html.j2",
                                                             "compare.html.j2")}
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import mainrun.pages as p; print(p.__file__); "
            "print(len(p.render_page('page.html.j2', 'installed')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, size = proc.stdout.split()
    assert where.startswith(str(site)) and int(size) > 1_000_000          # the page, plotly.js inlined
