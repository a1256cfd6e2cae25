"""Titles, the split, local/hub parity, the tokenizer and the on-disk cache."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY, make_titles
from mainrun import data as data_mod
from mainrun.config import RunConfig
from mainrun.data import (
    DataError, cache_key, encode_titles, join_titles, load_titles, prepare_data, split_titles, titles_digest,
    train_tokenizer,
)


def hf():
    """The `datasets` module, imported inside a test, not at collection: `datasets` and
    huggingface_hub read HF_DATASETS_CACHE / HF_HUB_OFFLINE once, when first imported, so
    importing them at collection would bypass conftest's isolated cache."""
    import datasets
    datasets.disable_progress_bars()
    return datasets


def in_memory(titles):
    return hf().Dataset.from_dict({"title": list(titles)})


def mainrun_split(titles, num_titles, seed, val_frac):
    """Mainrun's own get_titles(), written out: shuffle, take, strip, cut."""
    ds = in_memory(titles).shuffle(seed=seed)
    picked = [row["title"].strip() for row in ds.select(range(num_titles))]
    n = int(num_titles * (1 - val_frac))
    return picked[:n], picked[n:]


# ---------------------------------------------------------------------- the split
def test_split_is_deterministic_and_depends_on_the_seed():
    ds = in_memory(make_titles(600))
    a = split_titles(ds, 500, 1337, 0.1)
    b = split_titles(in_memory(make_titles(600)), 500, 1337, 0.1)
    assert a == b
    c = split_titles(ds, 500, 1338, 0.1)
    assert c != a
    assert c[0] != a[0] and c[1] != a[1]


def test_split_is_mainruns_pipeline():
    titles = make_titles(700)
    assert split_titles(in_memory(titles), 600, 1337, 0.1) == mainrun_split(titles, 600, 1337, 0.1)


@pytest.mark.parametrize("n, val_frac", [(1000, 0.1), (999, 0.1), (1000, 0.3), (1000, 0.7), (333, 0.25), (10, 0.5)])
def test_split_sizes(n, val_frac):
    titles = [f"title {i}" for i in range(n + 17)]
    train, val = split_titles(in_memory(titles), n, 7, val_frac)
    assert len(train) == int(n * (1 - val_frac))
    assert len(train) + len(val) == n
    assert len(set(train) | set(val)) == n            # n distinct rows, none twice
    assert set(train) | set(val) <= set(titles)


def test_titles_are_stripped():
    titles = [f"  padded {i}\t" if i % 3 == 0 else f"\nplain {i} \r" for i in range(200)]
    train, val = split_titles(in_memory(titles), 200, 1, 0.1)
    assert sorted(train + val) == sorted(t.strip() for t in titles)
    assert all(t == t.strip() for t in train + val)


def test_empty_split_is_refused():
    with pytest.raises(DataError, match="empty split"):
        split_titles(in_memory(["a", "b", "c"]), 1, 0, 0.1)      # int(0.9) = 0 training titles


# ---------------------------------------------------------------------- local files = hub path
TRICKY = ['He said "hi", then left', "a,b,c; d", "  padded both sides  ", "007", "Ünïcödé — “quotes” 🚀",
          "tab\tinside", "back\\slash", "'single' quotes"]


@pytest.fixture(scope="module")
def corpus():
    return make_titles(1200, seed=3) + TRICKY


def write_source(kind: str, titles, folder: Path) -> Path:
    ds = in_memory(titles)
    if kind == "txt":
        path = folder / "titles.txt"
        path.write_text("\n".join(titles) + "\n", encoding="utf-8")
    elif kind == "jsonl":
        path = folder / "titles.jsonl"
        ds.to_json(str(path))
    elif kind == "json":                # one JSON array of records
        path = folder / "titles.json"
        path.write_text(json.dumps([{"title": t} for t in titles], ensure_ascii=False), encoding="utf-8")
    elif kind == "csv":
        path = folder / "titles.csv"
        ds.to_csv(str(path))
    elif kind == "parquet":
        path = folder / "titles.parquet"
        ds.to_parquet(str(path))
    elif kind == "disk":
        path = folder / "titles_ds"
        ds.save_to_disk(str(path))
    elif kind == "diskdict":
        path = folder / "titles_dd"
        hf().DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(path))
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["txt", "jsonl", "json", "csv", "parquet", "disk", "diskdict"])
def test_local_sources_give_the_in_memory_split(tmp_path, corpus, kind):
    path = write_source(kind, corpus, tmp_path)
    n = len(corpus)                     # every row selected: the tricky titles are all in the split
    expected = split_titles(in_memory(corpus), n, 1337, 0.1)
    assert load_titles(str(path), n, 1337, 0.1) == expected
    smaller = split_titles(in_memory(corpus), 1000, 1337, 0.1)
    assert load_titles(str(path), 1000, 1337, 0.1) == smaller


def test_csv_keeps_titles_that_look_like_missing_values(tmp_path):
    """Titles such as 'None' or 'NA' exist on Hacker News. The hub (parquet) path keeps them,
    so a CSV copy of the same data must keep them too, or the split is not the hub's."""
    titles = make_titles(300) + ["NA", "None", "null", "NaN", "N/A"]
    path = write_source("csv", titles, tmp_path)
    assert load_titles(str(path), len(titles), 1337, 0.1) == split_titles(in_memory(titles), len(titles), 1337, 0.1)


def test_txt_with_crlf_line_endings(tmp_path):
    titles = make_titles(300)
    path = tmp_path / "titles.txt"
    path.write_bytes(("\r\n".join(titles) + "\r\n").encode())
    assert load_titles(str(path), 300, 5, 0.1) == split_titles(in_memory(titles), 300, 5, 0.1)


# ---------------------------------------------------------------------- data errors
def test_missing_file(tmp_path):
    with pytest.raises(DataError) as info:
        load_titles(str(tmp_path / "nope.txt"), 10, 0, 0.1)
    assert "not found" in str(info.value) and "nope.txt" in str(info.value)


@pytest.mark.parametrize("source", ["./no/such/thing", "titles.xlsx"])
def test_unrecognised_source(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "titles.xlsx").write_text("x")
    with pytest.raises(DataError) as info:
        load_titles(source, 10, 0, 0.1)
    assert ".txt" in str(info.value) and "save_to_disk" in str(info.value)


def test_too_few_titles(tmp_path):
    path = write_source("txt", make_titles(50), tmp_path)
    with pytest.raises(DataError) as info:
        load_titles(str(path), 100, 0, 0.1)
    msg = str(info.value)
    assert "50" in msg and "100" in msg and "num_titles" in msg


def test_empty_titles(tmp_path):
    path = tmp_path / "titles.txt"
    path.write_text("\n".join(make_titles(40) + ["", "   "] + make_titles(40, seed=1)) + "\n")
    with pytest.raises(DataError) as info:
        load_titles(str(path), 82, 0, 0.1)
    assert "2 of the 82" in str(info.value) and "empty" in str(info.value)


def test_null_titles_in_jsonl(tmp_path):
    path = tmp_path / "titles.jsonl"
    path.write_text('{"title": "a real title"}\n{"title": null}\n{"title": "another"}\n')
    with pytest.raises(DataError, match="empty"):
        load_titles(str(path), 3, 0, 0.4)


def test_file_without_a_title_column(tmp_path):
    path = tmp_path / "posts.jsonl"
    hf().Dataset.from_dict({"text": make_titles(20), "score": list(range(20))}).to_json(str(path))
    with pytest.raises(DataError) as info:
        load_titles(str(path), 10, 0, 0.1)
    msg = str(info.value)
    assert "'title'" in msg and "text" in msg and "score" in msg


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("this is not parquet")
    with pytest.raises(DataError) as info:
        load_titles(str(path), 10, 0, 0.1)
    assert "broken.parquet" in str(info.value) and "parquet" in str(info.value)


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_titles(str(tmp_path / "junk"), 10, 0, 0.1)


def test_dataset_dict_without_train(tmp_path):
    hf().DatasetDict({"test": in_memory(make_titles(20))}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="'train'"):
        load_titles(str(tmp_path / "dd"), 10, 0, 0.1)


def test_prepare_data_reports_a_data_error(tmp_path):
    path = write_source("txt", make_titles(50), tmp_path)
    cfg = RunConfig.from_dict({**TINY, "dataset": str(path)})        # num_titles 1000 > 50
    with pytest.raises(DataError, match="num_titles"):
        prepare_data(cfg, tmp_path / "cache", log=lambda _m: None)


def _internet() -> bool:
    import socket
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3):
            return True
    except OSError:
        return False


def test_hub_loader_fails_fast_without_network(monkeypatch):
    """The real path: this machine has no internet, so the connectivity probe fails."""
    if _internet():
        pytest.skip("huggingface.co is reachable here; this test is about a machine without network")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_titles("julien040/hacker-news-posts", 100_000, 1337, 0.1)
    assert time.perf_counter() - t0 < 15
    msg = str(info.value)
    assert "julien040/hacker-news-posts" in msg
    assert "local" in msg and "--dataset" in msg


def test_hub_loader_fails_fast_when_the_endpoint_refuses(monkeypatch):
    """The same, hermetic on any machine: the hub endpoint is a closed local port."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_titles("julien040/hacker-news-posts", 100_000, 1337, 0.1)
    assert time.perf_counter() - t0 < 15
    assert "127.0.0.1:9" in str(info.value) and "--dataset" in str(info.value)


def test_hub_loader_offline_mode_without_a_cached_copy(tmp_path):
    """HF_HUB_OFFLINE=1 with an empty HF cache: a DataError, quickly, not a raw exception.
    In a fresh process, because huggingface_hub reads HF_HUB_OFFLINE once, at import."""
    code = ("import time; from mainrun.data import load_titles, DataError\n"
            "t0 = time.perf_counter()\n"
            "try:\n    load_titles('julien040/hacker-news-posts', 100000, 1337, 0.1)\n"
            "except DataError as e:\n    print('DATAERROR', round(time.perf_counter() - t0, 1), e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "HF_HOME": str(tmp_path / "hfhome")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("DATAERROR"), proc.stdout + proc.stderr
    assert float(proc.stdout.split()[1]) < 15
    assert "julien040/hacker-news-posts" in proc.stdout


# ---------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tokenizer_and_titles():
    titles = make_titles(4500, seed=11) + TRICKY + ["x" * 300, "émoji 🚀🚀 and  double  spaces"]
    return train_tokenizer(titles, 400), titles


def test_special_token_ids(tokenizer_and_titles):
    tok, _ = tokenizer_and_titles
    assert tok.token_to_id("<pad>") == 0
    assert tok.token_to_id("<eos>") == 1
    assert tok.token_to_id("<unk>") == 2
    assert tok.get_vocab_size() == 400


def test_join_titles():
    assert join_titles(["a", "b c"]) == "a<eos>b c<eos>"


def test_chunked_encoding_equals_whole_text_encoding(tokenizer_and_titles):
    tok, titles = tokenizer_and_titles
    assert len(titles) > 2 * data_mod.ENCODE_CHUNK_TITLES          # several chunks, the last one partial
    ids = encode_titles(tok, titles)
    whole = np.asarray(tok.encode(join_titles(titles)).ids, dtype=np.int32)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, whole)
    assert int((ids == 1).sum()) == len(titles)                       # one <eos> per title
    assert ids[-1] == 1


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunk_size_does_not_change_the_ids(tokenizer_and_titles, monkeypatch, chunk):
    tok, titles = tokenizer_and_titles
    some = titles[:1500] + titles[-10:]
    monkeypatch.setattr(data_mod, "ENCODE_CHUNK_TITLES", chunk)
    np.testing.assert_array_equal(encode_titles(tok, some),
                                  np.asarray(tok.encode(join_titles(some)).ids, dtype=np.int32))


# ---------------------------------------------------------------------- prepared data and the cache
def quiet(_msg):
    pass


def cache_entries(cache: Path) -> list[str]:
    """The complete entries of a cache folder (whatever else it keeps beside them)."""
    return sorted(p.name for p in cache.iterdir() if (p / "meta.json").is_file())


def leftovers(cache: Path) -> list[str]:
    """Temporary files or folders (mainrun names them '.something') left anywhere in the cache."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob(".*"))


def test_prepare_data_contents(tiny_config, tmp_path):
    from tokenizers import Tokenizer

    d = prepare_data(tiny_config, tmp_path / "cache", log=quiet)
    train, val = load_titles(tiny_config.dataset, tiny_config.num_titles, tiny_config.seed, tiny_config.val_frac)
    assert (d.n_train_titles, d.n_val_titles) == (900, 100)
    assert d.val_chars == len(join_titles(val))
    assert d.titles_sha256 == titles_digest(train, val)
    assert d.key == cache_key(d.titles_sha256, tiny_config.vocab_size)
    tok = Tokenizer.from_file(str(d.tokenizer_path))
    assert d.vocab_size == tok.get_vocab_size() == tiny_config.vocab_size
    np.testing.assert_array_equal(d.train_ids, tok.encode(join_titles(train)).ids)
    np.testing.assert_array_equal(d.val_ids, tok.encode(join_titles(val)).ids)
    assert d.train_ids.max() < d.vocab_size and d.train_ids.min() >= 0
    assert d.cached is False


def test_second_prepare_is_a_cache_hit(tiny_config, tmp_path):
    logs = []
    first = prepare_data(tiny_config, tmp_path / "cache", log=logs.append)
    second = prepare_data(tiny_config, tmp_path / "cache", log=logs.append)
    assert first.cached is False and second.cached is True
    assert second.key == first.key
    np.testing.assert_array_equal(first.train_ids, second.train_ids)
    np.testing.assert_array_equal(first.val_ids, second.val_ids)
    assert (first.val_chars, first.vocab_size) == (second.val_chars, second.vocab_size)
    assert sum("training a" in m for m in logs) == 1
    assert "cache hit" in logs[-1]


def test_default_cache_dir_is_the_env_var(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MAINRUN_CACHE_DIR", str(tmp_path / "envcache"))
    d = prepare_data(tiny_config, log=quiet)
    assert d.tokenizer_path.parent.parent == tmp_path / "envcache"
    assert prepare_data(tiny_config, log=quiet).cached


def test_cache_key_depends_on_vocab_size_and_titles(tiny_config, tmp_path):
    cache = tmp_path / "cache"
    a = prepare_data(tiny_config, cache, log=quiet)
    b = prepare_data(tiny_config.replace(vocab_size=350), cache, log=quiet)
    c = prepare_data(tiny_config.replace(seed=1), cache, log=quiet)
    assert len({a.key, b.key, c.key}) == 3
    assert not b.cached and not c.cached
    assert b.vocab_size == 350
    assert a.titles_sha256 == b.titles_sha256 != c.titles_sha256
    assert cache_entries(cache) == sorted([a.key, b.key, c.key])
    assert prepare_data(tiny_config, cache, log=quiet).cached
    assert leftovers(cache) == []


def test_the_train_seed_leaves_the_data_alone(tiny_config, tmp_path):
    """The split and the tokenizer are keyed by seed: a robustness run (another train_seed)
    reads the very entry of the official run, so it is scored on the same tokens and characters."""
    cache = tmp_path / "cache"
    official = prepare_data(tiny_config, cache, log=quiet)
    robust = prepare_data(tiny_config.replace(train_seed=7), cache, log=quiet)
    assert robust.cached and robust.key == official.key and robust.val_chars == official.val_chars
    np.testing.assert_array_equal(robust.val_ids, official.val_ids)
    np.testing.assert_array_equal(robust.train_ids, official.train_ids)
    assert cache_entries(cache) == [official.key]


def test_a_changed_dataset_file_is_not_served_from_the_cache(tiny_config, tmp_path):
    cache = tmp_path / "cache"
    path = Path(tiny_config.dataset)
    first = prepare_data(tiny_config, cache, log=quiet)
    assert prepare_data(tiny_config, cache, log=quiet).cached
    st = path.stat()
    path.write_text("\n".join(make_titles(1500, seed=99)) + "\n")          # new content, same path
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = prepare_data(tiny_config, cache, log=quiet)
    assert not second.cached
    assert second.titles_sha256 != first.titles_sha256 and second.key != first.key
    train, val = load_titles(str(path), tiny_config.num_titles, tiny_config.seed, tiny_config.val_frac)
    assert second.titles_sha256 == titles_digest(train, val)
    assert second.val_chars == len(join_titles(val))


def test_a_new_tokenizers_version_is_not_served_an_old_entry(tiny_config, tmp_path, monkeypatch):
    """The unchanged-file shortcut remembers the titles, not the key: the key still follows the
    tokenizer settings."""
    import tokenizers
    cache = tmp_path / "cache"
    first = prepare_data(tiny_config, cache, log=quiet)
    monkeypatch.setattr(tokenizers, "__version__", tokenizers.__version__ + ".next")
    second = prepare_data(tiny_config, cache, log=quiet)
    assert not second.cached and second.key != first.key and second.titles_sha256 == first.titles_sha256
    assert prepare_data(tiny_config, cache, log=quiet).cached


def test_tokenizer_training_is_reproducible(tiny_config, tmp_path):
    a = prepare_data(tiny_config, tmp_path / "one", log=quiet)
    b = prepare_data(tiny_config, tmp_path / "two", log=quiet)
    assert not a.cached and not b.cached
    assert a.tokenizer_path.read_text() == b.tokenizer_path.read_text()
    np.testing.assert_array_equal(a.train_ids, b.train_ids)


def test_incomplete_entry_is_rebuilt(tiny_config, tmp_path):
    cache = tmp_path / "cache"
    train, val = load_titles(tiny_config.dataset, tiny_config.num_titles, tiny_config.seed, tiny_config.val_frac)
    key = cache_key(titles_digest(train, val), tiny_config.vocab_size)
    (cache / key).mkdir(parents=True)
    (cache / key / "train_ids.npy").write_bytes(b"half-written")        # a crash before meta.json
    (cache / f".{key}.k1ll3d").mkdir()                                  # a build killed in its temp folder
    (cache / f".{key}.k1ll3d" / "tokenizer.json").write_text("{}")
    d = prepare_data(tiny_config, cache, log=quiet)
    assert d.key == key and not d.cached and leftovers(cache) == []
    assert len(d.train_ids) > 1000
    assert prepare_data(tiny_config, cache, log=quiet).cached


def _prepare_in_child(cfg_dict, cache_dir, barrier, queue):
    from mainrun.config import RunConfig
    from mainrun.data import load_titles, prepare_data

    cfg = RunConfig.from_dict(cfg_dict)
    load_titles(cfg.dataset, cfg.num_titles, cfg.seed, cfg.val_frac)   # warm up imports and the HF cache
    barrier.wait(timeout=120)                                         # then all four race
    d = prepare_data(cfg, cache_dir, log=lambda _m: None)
    queue.put((d.key, d.cached, d.train_ids, d.val_ids, d.val_chars))


def test_concurrent_prepare_builds_one_entry(tiny_config, tmp_path):
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(tiny_config.to_dict(), str(cache), barrier, queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    keys = {r[0] for r in results}
    assert len(keys) == 1
    assert sum(not r[1] for r in results) == 1            # exactly one process built the entry
    for r in results[1:]:
        np.testing.assert_array_equal(r[2], results[0][2])
        np.testing.assert_array_equal(r[3], results[0][3])
        assert r[4] == results[0][4]
    assert cache_entries(cache) == [keys.pop()]             # one entry
    assert leftovers(cache) == []                           # no temporary folders or files left
    assert not [p for p in cache.iterdir() if p.is_dir() and p.name.startswith(".")]
    # and the parent sees the same data as a cache hit
    d = prepare_data(tiny_config, cache, log=quiet)
    assert d.cached
    np.testing.assert_array_equal(d.train_ids, results[0][2])


def test_an_interrupt_while_datasets_reads_a_file_stays_an_interrupt(tmp_path, monkeypatch):
    """datasets wraps a Ctrl-C or SIGTERM that lands while it builds the dataset in a
    DatasetGenerationError; that must stop the command (130/143), not report an unreadable
    file (exit 2). The wrapping is datasets' own: a KeyboardInterrupt is raised inside the
    real builder, the way the signal handler raises it."""
    hf()
    titles = tmp_path / "t.txt"
    titles.write_text("one title\nanother title\n")
    from datasets.packaged_modules.text import text as text_builder

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt("SIGTERM")
        yield
    monkeypatch.setattr(text_builder.Text, "_generate_tables", interrupted)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        data_mod.open_dataset(str(titles))
