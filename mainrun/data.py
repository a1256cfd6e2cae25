"""The titles, the tokenizer and the encoded id streams, with an on-disk cache.

Every source (the Hugging Face hub or a local file) becomes a `datasets.Dataset` with a
`title` column and then goes through the same Mainrun pipeline: `.shuffle(seed)`, take
`num_titles`, strip, first (1 - val_frac) for training, the rest for validation. Because
`Dataset.shuffle` permutes by row count alone, a local copy of the hub data gives the
identical split.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .config import RunConfig
from .errors import DataError

EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS = [PAD, EOS, UNK]          # Mainrun's order: ids 0, 1, 2
CACHE_FORMAT = 1                          # bump when the cached files' layout or meaning changes
LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ENCODE_CHUNK_TITLES = 2_000               # titles per encode_batch item; any multiple gives identical ids


# ---------------------------------------------------------------------- titles
def open_dataset(source: str):
    """Open `source` (a hub id or a local path) as a `datasets.Dataset` with a 'title' column."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"{path}: not a folder written by Dataset.save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(ds)})")
            ds = ds["train"]
    elif path.suffix.lower() in LOCAL_FORMATS:
        if not path.is_file():
            raise DataError(f"dataset file not found: {path}")
        if not os.access(path, os.R_OK):
            raise DataError(f"dataset file is not readable: {path}")
        builder = LOCAL_FORMATS[path.suffix.lower()]
        try:
            # csv: a title such as "NA" or "None" is a title, not a missing value
            options = {"keep_default_na": False} if builder == "csv" else {}
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
        except Exception as e:  # the builders raise many kinds; the user needs the file and the reason
            _reraise_interrupt(e)
            raise DataError(f"{path}: could not be read as {builder} ({type(e).__name__}: {e})") from None
        if builder == "text":
            ds = ds.rename_column("text", "title")
    elif "/" in source and not path.exists() and not source.startswith((".", "/", "~")):
        ds = _load_from_hub(source)
    else:
        raise DataError(
            f"dataset {source!r}: not a hub id (owner/name) nor an existing file with one of the "
            f"endings {', '.join(LOCAL_FORMATS)}, nor a save_to_disk folder")
    if "title" not in ds.column_names:
        raise DataError(f"dataset {source!r} has no 'title' column (columns: {', '.join(ds.column_names)})")
    return ds


def _load_from_hub(name: str):
    """The real Mainrun loader. Without network it fails within seconds, not after retries."""
    import datasets

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or \
        os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline:
        reason = _hub_unreachable()
        if reason:
            raise DataError(
                f"cannot reach the Hugging Face hub to download {name!r}: {reason}.\n"
                "  Pass a local copy instead, e.g. --dataset titles.txt (one title per line), or a\n"
                "  .jsonl/.csv/.parquet file with a 'title' column, or a Dataset.save_to_disk folder.\n"
                "  If the dataset is already in your Hugging Face cache, set HF_HUB_OFFLINE=1.")
    try:
        return datasets.load_dataset(name, split="train")
    except Exception as e:
        _reraise_interrupt(e)
        raise DataError(f"could not load {name!r} from the hub ({type(e).__name__}: {e})") from None


def _reraise_interrupt(e: BaseException) -> None:
    """datasets wraps a Ctrl-C or SIGTERM that lands while it builds (DatasetGenerationError):
    it is still an interrupt, not a file that cannot be read."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        if isinstance(e, KeyboardInterrupt):
            raise e
        seen.append(e)
        e = e.__cause__ or e.__context__


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port} is unreachable ({e.strerror or e})"


def load_titles(source: str, num_titles: int, seed: int, val_frac: float) -> tuple[list[str], list[str]]:
    """Mainrun's get_titles(): shuffle with `seed`, take `num_titles`, strip, split."""
    ds = open_dataset(source)
    return split_titles(ds, num_titles, seed, val_frac, source)


def split_titles(ds, num_titles: int, seed: int, val_frac: float, source: str = "dataset"):
    if len(ds) < num_titles:
        raise DataError(f"{source} has {len(ds):,} titles but num_titles is {num_titles:,}; "
                        "use a larger dataset or set num_titles (with mainrun_rules: false)")
    titles = [str(t if t is not None else "").strip() for t in ds.shuffle(seed=seed).take(num_titles)["title"]]
    empty = sum(1 for t in titles if not t)
    if empty:
        raise DataError(f"{source}: {empty:,} of the {num_titles:,} selected titles are empty; "
                        "remove empty lines/rows from the dataset")
    n_train = int(num_titles * (1 - val_frac))
    train, val = titles[:n_train], titles[n_train:]
    if not train or not val:
        raise DataError(f"{source}: num_titles={num_titles} and val_frac={val_frac} leave an empty split")
    return train, val


# ---------------------------------------------------------------------- tokenizer
def train_tokenizer(titles: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(titles, trainer)
    return tokenizer


def join_titles(titles: list[str]) -> str:
    """Mainrun's split text: titles joined with <eos>, plus a final <eos>."""
    return EOS.join(titles) + EOS


def encode_titles(tokenizer, titles: list[str]) -> np.ndarray:
    """Encode `join_titles(titles)` in parallel chunks. <eos> is a special token, so the
    text is cut there before pre-tokenisation, and chunking at <eos> gives the same ids
    as encoding the whole text at once (a test checks this)."""
    chunks = [join_titles(titles[i:i + ENCODE_CHUNK_TITLES]) for i in range(0, len(titles), ENCODE_CHUNK_TITLES)]
    encoded = tokenizer.encode_batch(chunks)
    return np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in encoded])


# ---------------------------------------------------------------------- prepared data + cache
@dataclass
class Data:
    train_ids: np.ndarray
    val_ids: np.ndarray
    val_chars: int            # len(val_text): evaluate()'s denominator
    vocab_size: int           # the trained tokenizer's actual size
    n_train_titles: int
    n_val_titles: int
    key: str                  # cache key: identifies titles + tokenizer settings
    titles_sha256: str        # identifies the split itself (dataset, seed, num_titles, val_frac)
    tokenizer_path: Path
    prep_seconds: float
    cached: bool


def default_cache_dir() -> Path:
    return Path(os.environ.get("MAINRUN_CACHE_DIR", Path.home() / ".cache" / "mainrun"))


def titles_digest(train: list[str], val: list[str]) -> str:
    h = hashlib.sha256()
    for part in ("\n".join(train), "\0", "\n".join(val)):
        h.update(part.encode("utf-8"))
    return h.hexdigest()


def cache_key(titles_sha256: str, vocab_size: int) -> str:
    import tokenizers
    spec = {"format": CACHE_FORMAT, "titles": titles_sha256, "vocab_size": vocab_size,
            "special": SPECIAL_TOKENS, "model": "bpe-bytelevel", "tokenizers": tokenizers.__version__}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def prepare_data(cfg: RunConfig, cache_dir: str | Path | None = None, log=print) -> Data:
    """Titles -> tokenizer -> id streams, cached on disk by everything that affects them.
    Concurrent processes serialise on a file lock; the winner writes into a temporary
    folder and renames it into place, so a reader never sees a half-written entry.
    A local file that has not changed (same path, size and mtime) is not even re-read: its
    titles' digest is remembered, and the key is derived from it as for any other source."""
    from filelock import FileLock

    t0 = time.perf_counter()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    stamp = _source_stamp(cfg, root)
    digest = stamp.read_text().strip() if stamp is not None and stamp.is_file() else None
    key = cache_key(digest, cfg.vocab_size) if digest else None
    cached = key is not None and (root / key / "meta.json").is_file()
    if not cached:
        train, val = load_titles(cfg.dataset, cfg.num_titles, cfg.seed, cfg.val_frac)
        digest = titles_digest(train, val)
        key = cache_key(digest, cfg.vocab_size)
        cached = (root / key / "meta.json").is_file()
        if not cached:
            with FileLock(str(root / f"{key}.lock")):
                cached = (root / key / "meta.json").is_file()
                if not cached:
                    log(f"data: training a {cfg.vocab_size:,}-token BPE tokenizer on {len(train) + len(val):,} titles")
                    _build_entry(root / key, train, val, cfg.vocab_size, digest)
        if stamp is not None:
            _write_atomic(stamp, digest)
    entry = root / key
    meta = json.loads((entry / "meta.json").read_text())
    data = Data(
        train_ids=np.load(entry / "train_ids.npy"), val_ids=np.load(entry / "val_ids.npy"),
        val_chars=meta["val_chars"], vocab_size=meta["vocab_size"], n_train_titles=meta["n_train_titles"],
        n_val_titles=meta["n_val_titles"], key=key, titles_sha256=meta["titles_sha256"],
        tokenizer_path=entry / "tokenizer.json", prep_seconds=time.perf_counter() - t0, cached=cached)
    log(f"data: {data.n_train_titles:,} train / {data.n_val_titles:,} val titles, "
        f"{len(data.train_ids):,} / {len(data.val_ids):,} tokens, vocab {data.vocab_size:,} "
        f"({'cache hit' if cached else 'prepared'}, {data.prep_seconds:.1f}s)")
    return data


def _source_stamp(cfg: RunConfig, root: Path) -> Path | None:
    """For a local file: where the titles digest of (this exact file version, split) is kept."""
    path = Path(cfg.dataset).expanduser()
    if not path.is_file():
        return None
    st = path.stat()
    spec = [CACHE_FORMAT, "titles_sha256", str(path.resolve()), st.st_size, st.st_mtime_ns, cfg.num_titles,
            cfg.seed, cfg.val_frac]
    return root / "stamps" / hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:24]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _build_entry(entry: Path, train: list[str], val: list[str], vocab_size: int, digest: str) -> None:
    """Build into a temporary folder and rename it into place. Called under the entry's lock."""
    for stale in entry.parent.glob(f".{entry.name}.*"):   # left by a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        tokenizer = train_tokenizer(train + val, vocab_size)
        tokenizer.save(str(tmp / "tokenizer.json"))
        np.save(tmp / "train_ids.npy", encode_titles(tokenizer, train))
        np.save(tmp / "val_ids.npy", encode_titles(tokenizer, val))
        meta = {"titles_sha256": digest, "vocab_size": tokenizer.get_vocab_size(),
                "val_chars": len(join_titles(val)), "n_train_titles": len(train), "n_val_titles": len(val)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():                      # a stale, incomplete entry (no meta.json)
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

