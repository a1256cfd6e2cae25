"""The run configuration: one dataclass that holds every knob of a Mainrun training run.

The defaults are the Mainrun baseline. A YAML file overrides any subset of the fields;
anything unknown, mistyped or impossible is refused with a `ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, YamlError

HUB_DATASET = "julien040/hacker-news-posts"

# Fields the Mainrun rules fix. They keep their defaults unless `mainrun_rules: false`.
MAINRUN_FIXED = (
    "epochs", "seed", "num_titles", "val_frac", "evals_per_epoch",
    "eval_batch_size", "eval_block_size",
)

# Values allowed for the string-valued choice fields.
CHOICES: dict[str, tuple[str, ...]] = {
    "mlp": ("gelu", "swiglu", "relu2"),
    "norm": ("layernorm", "rmsnorm"),
    "pos_emb": ("learned", "rope"),
    "optimizer": ("sgd", "adamw", "muon"),
    "schedule": ("cosine", "warmup_cosine", "linear", "wsd", "constant"),
    "init": ("normal", "kaiming"),
    "residual_init": ("same", "scaled", "zero"),
    "precision": ("auto", "bf16", "fp32"),
    "compile": ("auto", "none", "regional", "model"),
}


# Known settings, by name: `mainrun-train --preset NAME` and a search space's `enqueue:` use them.
PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {},
    # seed report 000: AdamW + linear warmup and cosine decay
    "report-000": {"optimizer": "adamw", "lr": 3e-4, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1,
                   "schedule": "warmup_cosine", "warmup_steps": 100},
    # seed report 003: wider, deeper, SwiGLU
    "report-003": {"d_model": 1024, "n_head": 16, "n_layer": 8, "mlp": "swiglu", "optimizer": "adamw",
                   "lr": 1e-3, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.01,
                   "schedule": "warmup_cosine", "warmup_steps": 100},
}


@dataclass
class RunConfig:
    # --- data and tokenizer (Mainrun `Hyperparameters` names) ---
    dataset: str = HUB_DATASET          # hub id, or a local .txt/.jsonl/.csv/.parquet file or save_to_disk folder
    num_titles: int = 100_000
    val_frac: float = 0.10
    seed: int = 1337                    # the data split and tokenizer; and the training, unless train_seed is set
    train_seed: int | None = None       # every random draw of training (init, dropout); null: seed. Another value
                                        # is a robustness run: scored on the same tokens, not the official number
    vocab_size: int = 16_000
    # --- model ---
    block_size: int = 128
    n_layer: int = 6
    n_head: int = 8
    d_model: int = 512
    dropout: float = 0.1
    mlp: str = "gelu"                   # gelu (baseline, 4x), swiglu, relu2
    mlp_ratio: float = 4.0              # hidden width / d_model (swiglu uses 2/3 of it per branch)
    norm: str = "layernorm"
    pos_emb: str = "learned"
    qk_norm: bool = False
    tie_embeddings: bool = True
    bias: bool = True
    init: str = "normal"                # Linear and embedding weights: normal N(0, 0.02) (the baseline), or kaiming:
                                        # the blocks' Linear weights N(0, 2 / fan_in) (He), the rest N(0, 0.02)
    residual_init: str = "same"         # the blocks' output projections (attention proj, MLP down): same as init;
                                        # scaled: init's std / sqrt(2 n_layer) (GPT-2); zero (modded-nanogpt)
    # --- optimisation ---
    batch_size: int = 64                # sequences per micro-batch (per forward/backward)
    grad_accum_steps: int = 1           # micro-batches per optimizer update (see train.py, "Steps")
    epochs: int = 7
    optimizer: str = "sgd"              # muon: Muon on the blocks' matrices, AdamW on the rest, one lr
    lr: float = 6e-3
    weight_decay: float = 0.0
    decay_all: bool = True              # false: no weight decay on norms, biases and embeddings
    momentum: float = 0.0               # sgd only
    nesterov: bool = False              # sgd only
    muon_momentum: float = 0.95         # muon only
    beta1: float = 0.9                  # adamw, and muon's AdamW part
    beta2: float = 0.999                # adamw, and muon's AdamW part
    eps: float = 1e-8                   # adamw, and muon's AdamW part
    schedule: str = "cosine"            # cosine: the baseline's CosineAnnealingLR over all updates;
                                        # constant: lr throughout (after warmup_steps, if any)
    warmup_steps: int = 0               # warmup_cosine / linear / wsd / constant; counts optimizer updates
    min_lr_frac: float = 0.0            # warmup_cosine / linear / wsd: final lr = lr * min_lr_frac
    decay_frac: float = 0.2             # wsd: the last fraction of the steps decays linearly
    grad_clip: float = 1.0              # 0 disables clipping
    precision: str = "auto"             # auto: bf16 autocast on CUDA, fp32 elsewhere
    cuda_graph: bool = True             # CUDA + AdamW, grad_accum_steps 1: capture the whole step once, replay it
    compile: str = "auto"               # torch.compile: regional (each block, compiled once, and the loss) or model;
                                        # auto: regional on CUDA (it pays off, cold cache included), none elsewhere
    # --- evaluation (Mainrun-fixed scoring geometry) ---
    evals_per_epoch: int = 3
    eval_batch_size: int = 64
    eval_block_size: int = 128
    # --- rules ---
    mainrun_rules: bool = True          # false: allow changing the fixed fields; the number is then not comparable

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            setattr(self, f.name, check_field(f.name, getattr(self, f.name)))
        # rules that involve several fields
        _check(not self.nesterov or self.momentum > 0, "nesterov", "needs momentum > 0")
        _check(self.d_model % self.n_head == 0, "n_head",
               f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        _check(self.pos_emb != "rope" or self.head_dim % 2 == 0, "pos_emb",
               f"rope needs an even head dimension; d_model/n_head = {self.head_dim}")
        _check(int(self.mlp_ratio * self.d_model) >= 1, "mlp_ratio",
               f"mlp_ratio * d_model must give at least one hidden unit; got {self.mlp_ratio} * {self.d_model}")
        # the baseline's cosine (CosineAnnealingLR to 0) has neither: a value here would be ignored
        for name in ("warmup_steps", "min_lr_frac"):
            _check(self.schedule != "cosine" or getattr(self, name) == 0, name,
                   f"schedule 'cosine' (the baseline's, down to 0 with no warmup) ignores it; got "
                   f"{getattr(self, name)!r}; use schedule warmup_cosine, linear or wsd")
        _check(self.schedule != "constant" or self.min_lr_frac == 0, "min_lr_frac",
               f"schedule 'constant' never decays, so it ignores it; got {self.min_lr_frac!r}; "
               "use schedule warmup_cosine, linear or wsd")
        if self.mainrun_rules:
            baseline = RunConfig.__dataclass_fields__
            for name in MAINRUN_FIXED:
                default = baseline[name].default
                if getattr(self, name) != default:
                    raise ConfigError(
                        f"key '{name}': the Mainrun rules fix it at {default!r} (got {getattr(self, name)!r}); "
                        "set 'mainrun_rules: false' to change it, and the result is then not comparable with Mainrun's")

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def comparable(self) -> bool:
        """True when every Mainrun-fixed field has its Mainrun value."""
        baseline = RunConfig.__dataclass_fields__
        return all(getattr(self, n) == baseline[n].default for n in MAINRUN_FIXED)

    @property
    def effective_train_seed(self) -> int:
        """The seed of every random draw of training: train_seed, or seed when it is None."""
        return self.seed if self.train_seed is None else self.train_seed

    @property
    def official(self) -> bool:
        """Comparable and trained on the data seed: the run's value is the Mainrun number. A
        comparable run on another train seed is a robustness run (same scoring, other draws)."""
        return self.comparable and self.effective_train_seed == self.seed

    def changed_fixed_fields(self) -> dict[str, Any]:
        baseline = RunConfig.__dataclass_fields__
        return {n: getattr(self, n) for n in MAINRUN_FIXED if getattr(self, n) != baseline[n].default}

    # ------------------------------------------------------------------ dict / YAML
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, base: "RunConfig | None" = None, source: str = "config") -> "RunConfig":
        """Build a config from a mapping; missing keys come from `base` (default: the baseline)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of config keys; got {type(data).__name__}")
        data = migrate_legacy_keys(data, source)
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"{source}: unknown key '{key}'{_did_you_mean(str(key), known)}")
        merged = base.to_dict() if base is not None else {}
        merged.update(data)
        try:
            return cls(**merged)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> "RunConfig":
        return RunConfig.from_dict(changes, base=self)

    @classmethod
    def from_yaml(cls, path: str | Path, *, base: "RunConfig | None" = None) -> "RunConfig":
        data = load_yaml_file(path)
        return cls.from_dict({} if data is None else data, base=base, source=str(path))

    def to_yaml(self, path: str | Path | None = None, header: str = "") -> str:
        comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
        text = comment + yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text


# Keys that older mainrun versions wrote (a study stores every trial's full config, and
# mainrun-export rebuilds a RunConfig from it): each maps its value onto today's fields.
LEGACY_KEYS: dict[str, tuple[type, Any]] = {
    # scaled_residual_init (bool) became residual_init: scaled / same
    "scaled_residual_init": (bool, lambda v: {"residual_init": "scaled" if v else "same"}),
}


def migrate_legacy_keys(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """`data` with its legacy keys replaced by today's. A legacy key that disagrees with its
    replacement, given in the same mapping, is refused."""
    if not any(key in LEGACY_KEYS for key in data):
        return data
    data = dict(data)
    for old, (kind, translate) in LEGACY_KEYS.items():
        if old not in data:
            continue
        value = data.pop(old)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{source}: key '{old}': expected {kind.__name__}; got {value!r}")
        for new, new_value in translate(value).items():
            if new in data and data[new] != new_value:
                raise ConfigError(f"{source}: key '{old}': {old}: {value!r} means {new}: {new_value}, but "
                                  f"{new}: {data[new]!r} is also given; keep only {new}")
            data.setdefault(new, new_value)
    return data


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"key '{key}': {message}")


_POSITIVE = ("num_titles", "vocab_size", "block_size", "n_layer", "n_head", "d_model",
             "batch_size", "grad_accum_steps", "epochs", "evals_per_epoch", "eval_batch_size", "eval_block_size")
# Rules about one field alone: (test, what the value must be).
_FIELD_RULES: dict[str, tuple[Any, str]] = {
    **{name: (lambda v: v > 0, "a positive integer") for name in _POSITIVE},
    "lr": (lambda v: v > 0, "> 0"),
    "dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "val_frac": (lambda v: 0.0 < v < 1.0, "in (0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "muon_momentum": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "beta1": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "beta2": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "eps": (lambda v: v > 0, "> 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "min_lr_frac": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "decay_frac": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "grad_clip": (lambda v: v >= 0, ">= 0 (0 disables clipping)"),
    "mlp_ratio": (lambda v: v > 0, "> 0"),
    "vocab_size": (lambda v: v >= 259, "at least 259 (256 bytes + 3 special tokens)"),
    "dataset": (lambda v: bool(v.strip()), "a hub id or a path, not empty"),
    # datasets' shuffle wants it >= 0, torch.manual_seed below 2**64
    "seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "train_seed": (lambda v: v is None or 0 <= v < 2**63, "null (the same as seed) or an integer in [0, 2**63)"),
}


def check_field(name: str, value: Any) -> Any:
    """Coerce and check one field's value on its own (rules between fields are in validate())."""
    value = _coerce(name, value, _FIELD_TYPES[name])
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"key '{name}': must be one of {', '.join(CHOICES[name])}; got {value!r}")
    if name in _FIELD_RULES:
        test, must = _FIELD_RULES[name]
        _check(test(value), name, f"must be {must}; got {value!r}")
    return value


def _did_you_mean(key: str, known: set[str]) -> str:
    import difflib
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def is_int(value: Any) -> bool:
    """An int, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Check `value` against the field type. Ints become floats for float fields, and a
    numeric string such as '6e-3' is accepted for a float (YAML 1.1 reads it as a string)."""
    optional = typing.get_args(kind)
    if optional:                                    # `int | None`: null, or a value of the type
        if value is None:
            return None
        kind = next(k for k in optional if k is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if is_int(value):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if is_number(value):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"key '{name}': must be a finite number; got {value}")
            return number
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
    elif kind is str:
        if isinstance(value, str):
            return value
    expected = kind.__name__ + (" or null" if optional else "")
    raise ConfigError(f"key '{name}': expected {expected}; got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------------- safe YAML
_FIELD_TYPES = typing.get_type_hints(RunConfig)


class _StrictLoader(yaml.SafeLoader):
    """safe_load semantics, plus: duplicate keys are an error, and anchors/aliases are refused
    (a 'billion laughs' file can otherwise expand to gigabytes)."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "aliases (*name) are not allowed in mainrun files", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be plain values", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_YAML_BYTES = 1 << 20


def parse_yaml_text(text: str, source: str) -> Any:
    if len(text) > MAX_YAML_BYTES:
        raise YamlError(f"{source}: file is larger than {MAX_YAML_BYTES} bytes; this is not a mainrun file")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "'\\t'" in str(e):
            problem += "; YAML does not allow tabs for indentation"
        raise YamlError(f"{source}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise YamlError(f"{source}: nesting is too deep") from None


def parse_overrides(pairs: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings (from --set, --ablate) as a dict; each value is read as YAML."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE; got {pair!r}")
        overrides[key.strip()] = parse_yaml_text(value, f"{flag} {key.strip()}")
    return overrides


def load_yaml_file(path: str | Path) -> Any:
    return parse_yaml_text(read_yaml_text(path), str(path))


def read_yaml_text(path: str | Path) -> str:
    """The text of a mainrun YAML file; a missing, unreadable, huge or non-UTF-8 file is a YamlError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise YamlError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise YamlError(f"{path}: is a directory, not a YAML file") from None
    except OSError as e:
        raise YamlError(f"{path}: cannot read the file ({e.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise YamlError(f"{path}: file is larger than {MAX_YAML_BYTES} bytes; this is not a mainrun file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlError(f"{path}: not a UTF-8 text file") from None

