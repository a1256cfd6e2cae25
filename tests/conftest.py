"""Shared fixtures: small generated corpora, a tiny run config, an isolated cache, PostgreSQL."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import TINY, make_titles


def pytest_report_header(config):
    """Which torch and which CPU kernels ran: numeric results differ by a few ulps between the
    default, AVX2 and AVX-512 kernel sets (ATEN_CPU_CAPABILITY forces one)."""
    import torch
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    return (f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
            + (f" (forced by ATEN_CPU_CAPABILITY={forced})" if forced else ""))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own tokenizer cache and HF datasets cache; nothing touches the network."""
    base = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("MAINRUN_CACHE_DIR", str(base / "mainrun"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(base / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def titles_file(tmp_path) -> Path:
    path = tmp_path / "titles.txt"
    path.write_text("\n".join(make_titles(1500)) + "\n")
    return path


@pytest.fixture
def tiny_config(titles_file):
    from mainrun.config import RunConfig
    return RunConfig.from_dict({**TINY, "dataset": str(titles_file)})


@pytest.fixture
def pg_url():
    """A PostgreSQL database URL from MAINRUN_TEST_PG_URL (.ci/run starts a server and sets it).
    Each test gets a fresh database."""
    url = os.environ.get("MAINRUN_TEST_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("MAINRUN_TEST_PG_URL is not set in CI; .ci/run should start PostgreSQL")
        pytest.skip("MAINRUN_TEST_PG_URL not set (see .ci/run)")
    import uuid

    import sqlalchemy
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    test_url = sqlalchemy.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
    yield test_url
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()

