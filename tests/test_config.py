"""RunConfig: the Mainrun baseline defaults, YAML round trip, refusals and YAML safety."""
from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from helpers import TINY, cli
from mainrun.config import MAINRUN_FIXED, ConfigError, RunConfig, YamlError, load_yaml_file


def write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(data: dict) -> str:
    """The message of the ConfigError that RunConfig.from_dict(data) must raise."""
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    return str(info.value)


# ---------------------------------------------------------------------- defaults
def test_defaults_are_the_mainrun_baseline():
    cfg = RunConfig()
    assert cfg.block_size == 128
    assert cfg.batch_size == 64
    assert cfg.vocab_size == 16_000
    assert cfg.n_layer == 6
    assert cfg.n_head == 8
    assert cfg.d_model == 512
    assert cfg.dropout == 0.1
    assert cfg.optimizer == "sgd"
    assert cfg.lr == 6e-3
    assert cfg.weight_decay == 0.0
    assert cfg.momentum == 0.0
    assert cfg.schedule == "cosine"
    assert cfg.epochs == 7
    assert cfg.seed == 1337
    assert cfg.num_titles == 100_000
    assert cfg.val_frac == 0.1
    assert cfg.evals_per_epoch == 3
    assert cfg.eval_batch_size == 64 and cfg.eval_block_size == 128
    assert cfg.dataset == "julien040/hacker-news-posts"
    assert cfg.mlp == "gelu" and cfg.norm == "layernorm" and cfg.pos_emb == "learned"
    assert cfg.tie_embeddings is True
    assert cfg.mainrun_rules is True
    assert cfg.comparable is True
    assert cfg.changed_fixed_fields() == {}


def test_empty_mapping_and_empty_file_give_the_baseline(tmp_path):
    assert RunConfig.from_dict({}) == RunConfig()
    assert RunConfig.from_yaml(write(tmp_path, "")) == RunConfig()
    assert RunConfig.from_yaml(write(tmp_path, "# only a comment\n")) == RunConfig()


# ---------------------------------------------------------------------- YAML round trip
def test_yaml_round_trip_of_the_baseline(tmp_path):
    path = tmp_path / "sub" / "baseline.yaml"
    text = RunConfig().to_yaml(path, header="the baseline\n\nline three")
    assert path.read_text() == text
    assert text.startswith("# the baseline\n#\n# line three\n")
    assert RunConfig.from_yaml(path) == RunConfig()


def test_yaml_round_trip_of_a_non_default_config(tmp_path):
    cfg = RunConfig.from_dict({
        **TINY, "mlp": "swiglu", "norm": "rmsnorm", "pos_emb": "rope", "qk_norm": True,
        "tie_embeddings": False, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.1,
        "schedule": "warmup_cosine", "warmup_steps": 7, "min_lr_frac": 0.1, "dataset": "some/file.txt",
    })
    path = tmp_path / "run.yaml"
    cfg.to_yaml(path)
    back = RunConfig.from_yaml(path)
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    # the numbers keep their type through YAML (an int stays an int, a float a float)
    assert type(back.lr) is float and type(back.block_size) is int


def test_partial_file_overrides_only_its_keys(tmp_path):
    path = write(tmp_path, "lr: 0.01\nn_layer: 4\nmlp: swiglu\n")
    cfg = RunConfig.from_yaml(path)
    base = RunConfig().to_dict()
    changed = {k: v for k, v in cfg.to_dict().items() if base[k] != v}
    assert changed == {"lr": 0.01, "n_layer": 4, "mlp": "swiglu"}


def test_partial_file_on_top_of_a_base(tmp_path):
    base = RunConfig.from_dict({"d_model": 256, "n_head": 4})
    cfg = RunConfig.from_yaml(write(tmp_path, "n_layer: 2\n"), base=base)
    assert (cfg.d_model, cfg.n_head, cfg.n_layer) == (256, 4, 2)


@pytest.mark.parametrize("text", ["lr: 6e-3", "lr: '6e-3'", "lr: 6.0e-3", "lr: 0.006"])
def test_numeric_strings_are_accepted_for_float_fields(tmp_path, text):
    # YAML 1.1 reads 6e-3 (no dot) as a string
    assert isinstance(yaml.safe_load(text)["lr"], (str, float))
    cfg = RunConfig.from_yaml(write(tmp_path, text + "\n"))
    assert cfg.lr == pytest.approx(0.006) and isinstance(cfg.lr, float)


def test_int_is_accepted_for_float_and_integral_float_for_int():
    cfg = RunConfig.from_dict({"lr": 1, "block_size": 64.0})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.block_size == 64 and isinstance(cfg.block_size, int)


def test_replace_validates():
    cfg = RunConfig().replace(lr=0.1)
    assert cfg.lr == 0.1 and RunConfig().lr == 6e-3
    with pytest.raises(ConfigError, match="'dropout'"):
        cfg.replace(dropout=1.0)


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("key, suggestion", [
    ("n_layers", "n_layer"), ("blocksize", "block_size"), ("drop_out", "dropout"), ("epoch", "epochs"),
])
def test_unknown_key_is_refused_with_did_you_mean(key, suggestion):
    msg = refusal({key: 1})
    assert f"unknown key '{key}'" in msg
    assert f"did you mean '{suggestion}'" in msg


def test_unknown_key_without_a_close_match():
    msg = refusal({"learning_rate": 0.1})
    assert "unknown key 'learning_rate'" in msg
    assert "did you mean" not in msg


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path, "n_layers: 4\n")
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml(path)
    assert str(path) in str(info.value) and "'n_layers'" in str(info.value)


@pytest.mark.parametrize("key, value", [
    ("block_size", "64"),          # string for int
    ("block_size", True),          # bool for int
    ("block_size", [64]),          # list
    ("block_size", {"a": 1}),      # mapping
    ("block_size", 64.5),          # non-integral float for int
    ("block_size", None),
    ("n_layer", float("inf")),
    ("lr", True),                  # bool for float
    ("lr", "fast"),                # non-numeric string for float
    ("lr", "nan"),                 # non-finite numeric string
    ("lr", "1e400"),               # overflows to inf
    ("lr", float("nan")),
    ("lr", float("inf")),
    ("lr", [0.1]),
    ("dropout", None),
    ("qk_norm", "true"),           # string for bool
    ("qk_norm", 1),                # int for bool
    ("mainrun_rules", 0),
    ("mlp", 5),                    # int for str
    ("mlp", ["gelu"]),
    ("dataset", None),
    ("grad_accum_steps", 2.5),
    ("grad_accum_steps", True),
    ("grad_accum_steps", None),
    ("init", None),
    ("residual_init", False),      # the old bool's value is not a choice of the new field
    ("train_seed", "7"),
    ("train_seed", True),
    ("train_seed", 7.5),
    ("scaled_residual_init", "yes"),   # a legacy key keeps its old type
    ("scaled_residual_init", 1),
])
def test_wrong_types_are_refused_naming_the_key(key, value):
    assert f"'{key}'" in refusal({key: value})


def test_huge_integer_for_a_float_field_is_a_config_error():
    """A 400-digit integer (YAML reads it as int) cannot become a float: refuse it as a
    ConfigError, not an OverflowError that escapes the CLI as a traceback."""
    assert "'lr'" in refusal({"lr": 10 ** 400})


@pytest.mark.parametrize("key, value", [
    ("lr", 0), ("lr", -1e-3),
    ("dropout", 1.0), ("dropout", -0.1), ("dropout", 1.5),
    ("weight_decay", -0.1), ("momentum", 1.0), ("beta1", 1.0), ("beta2", -0.5), ("eps", 0.0),
    ("warmup_steps", -1), ("min_lr_frac", 1.5), ("grad_clip", -1.0), ("mlp_ratio", 0),
    ("block_size", 0), ("batch_size", -8), ("n_layer", 0), ("vocab_size", 258), ("dataset", "  "),
    ("grad_accum_steps", 0), ("grad_accum_steps", -2), ("train_seed", -1), ("train_seed", 2**63),
])
def test_impossible_values_are_refused_naming_the_key(key, value):
    assert f"'{key}'" in refusal({key: value})


def test_boundary_values_are_accepted():
    cfg = RunConfig.from_dict({"dropout": 0.0, "momentum": 0.0, "schedule": "linear", "min_lr_frac": 1.0, "grad_clip": 0,
                               "vocab_size": 259, "lr": 1e-9})
    assert cfg.dropout == 0.0 and cfg.vocab_size == 259


def test_values_that_would_be_ignored_or_crash_later_are_refused():
    for changes in ({"warmup_steps": 100}, {"min_lr_frac": 0.1}):            # under the baseline's cosine
        msg = refusal(changes)
        assert f"'{next(iter(changes))}'" in msg and "warmup_cosine" in msg
    assert RunConfig.from_dict({"schedule": "warmup_cosine", "warmup_steps": 100}).warmup_steps == 100
    assert "'mlp_ratio'" in refusal({"mlp_ratio": 0.001})                      # no hidden unit left
    for seed in (-1, 2**64):
        assert "'seed'" in refusal({"seed": seed, "mainrun_rules": False})


def test_the_new_knobs_default_to_the_baseline():
    cfg = RunConfig()
    assert (cfg.grad_accum_steps, cfg.init, cfg.residual_init, cfg.train_seed) == (1, "normal", "same", None)
    assert cfg.effective_train_seed == cfg.seed == 1337 and cfg.official


def test_a_constant_schedule_refuses_a_floor_it_would_ignore_and_takes_a_warmup():
    msg = refusal({"schedule": "constant", "min_lr_frac": 0.1})
    assert "'min_lr_frac'" in msg and "'constant'" in msg
    cfg = RunConfig.from_dict({"schedule": "constant", "warmup_steps": 100})
    assert (cfg.schedule, cfg.warmup_steps) == ("constant", 100)


def test_train_seed_is_null_or_a_seed_and_only_another_value_is_a_robustness_run():
    assert RunConfig.from_dict({"train_seed": None}) == RunConfig()
    same = RunConfig.from_dict({"train_seed": 1337})
    assert same.effective_train_seed == 1337 and same.official and same.comparable
    other = RunConfig.from_dict({"train_seed": 0})
    assert other.effective_train_seed == 0 and other.comparable and not other.official
    # without the rules the default follows the data seed
    moved = RunConfig.from_dict({"seed": 5, "mainrun_rules": False})
    assert moved.effective_train_seed == 5 and not moved.official            # not comparable either
    assert "'train_seed'" in refusal({"train_seed": -1}) and "null" in refusal({"train_seed": -1})


def test_the_legacy_scaled_residual_init_key_maps_onto_residual_init(tmp_path):
    assert RunConfig.from_dict({"scaled_residual_init": True}).residual_init == "scaled"
    assert RunConfig.from_dict({"scaled_residual_init": False}) == RunConfig()
    assert RunConfig.from_dict({"scaled_residual_init": True, "residual_init": "scaled"}).residual_init == "scaled"
    msg = refusal({"scaled_residual_init": True, "residual_init": "zero"})
    assert "'scaled_residual_init'" in msg and "keep only residual_init" in msg
    # a stored config of an older mainrun (every field as it wrote them) still loads
    old = {k: v for k, v in RunConfig().to_dict().items()
           if k not in ("train_seed", "init", "residual_init", "grad_accum_steps")}
    cfg = RunConfig.from_dict({**old, "scaled_residual_init": True}, source="trial 3")
    assert cfg == RunConfig(residual_init="scaled")
    assert "scaled_residual_init" not in cfg.to_dict()
    assert RunConfig.from_yaml(write(tmp_path, "scaled_residual_init: true\n")).residual_init == "scaled"
    assert RunConfig().replace(scaled_residual_init=True).residual_init == "scaled"


def test_d_model_not_divisible_by_n_head():
    msg = refusal({"d_model": 500, "n_head": 8})
    assert "'n_head'" in msg and "d_model" in msg and "500" in msg


def test_rope_needs_an_even_head_dim():
    assert "'pos_emb'" in refusal({"d_model": 24, "n_head": 8, "pos_emb": "rope"})
    assert RunConfig.from_dict({"d_model": 24, "n_head": 8}).head_dim == 3   # fine without rope


@pytest.mark.parametrize("key", ["mlp", "norm", "pos_emb", "optimizer", "schedule", "precision", "init",
                                 "residual_init"])
def test_bad_choice_strings_are_refused(key):
    msg = refusal({key: "bogus"})
    assert f"'{key}'" in msg and "'bogus'" in msg and "must be one of" in msg


@pytest.mark.parametrize("key, value", [
    ("mlp", "swiglu"), ("mlp", "relu2"), ("norm", "rmsnorm"), ("pos_emb", "rope"),
    ("optimizer", "adamw"), ("schedule", "linear"), ("schedule", "warmup_cosine"),
    ("precision", "bf16"), ("precision", "fp32"), ("schedule", "constant"), ("init", "kaiming"),
    ("residual_init", "scaled"), ("residual_init", "zero"),
])
def test_good_choice_strings_are_accepted(key, value):
    assert getattr(RunConfig.from_dict({key: value}), key) == value


def test_choice_strings_are_case_sensitive():
    assert "'mlp'" in refusal({"mlp": "GELU"})


def test_nesterov_needs_momentum():
    assert "'nesterov'" in refusal({"nesterov": True})
    assert "'nesterov'" in refusal({"nesterov": True, "momentum": 0.0})
    cfg = RunConfig.from_dict({"nesterov": True, "momentum": 0.9})
    assert cfg.nesterov and cfg.momentum == 0.9


FIXED_CHANGES = {
    "epochs": 3, "seed": 1, "num_titles": 5000, "val_frac": 0.2, "evals_per_epoch": 5,
    "eval_batch_size": 32, "eval_block_size": 64,
}


def test_the_fixed_field_list_is_the_brief():
    assert set(MAINRUN_FIXED) == set(FIXED_CHANGES)


@pytest.mark.parametrize("key", sorted(FIXED_CHANGES))
def test_fixed_field_change_is_refused_under_mainrun_rules(key):
    msg = refusal({key: FIXED_CHANGES[key]})
    assert f"'{key}'" in msg and "mainrun_rules: false" in msg


@pytest.mark.parametrize("key", sorted(FIXED_CHANGES))
def test_fixed_field_change_is_accepted_without_mainrun_rules(key):
    cfg = RunConfig.from_dict({key: FIXED_CHANGES[key], "mainrun_rules": False})
    assert getattr(cfg, key) == FIXED_CHANGES[key]
    assert cfg.comparable is False
    assert cfg.changed_fixed_fields() == {key: FIXED_CHANGES[key]}


def test_fixed_field_set_to_its_default_is_fine_and_comparable(tmp_path):
    cfg = RunConfig.from_yaml(write(tmp_path, "epochs: 7\nseed: 1337\nval_frac: 0.1\n"))
    assert cfg.comparable and cfg.mainrun_rules
    off = RunConfig.from_dict({"mainrun_rules": False})
    assert off.comparable is True          # rules off, but nothing fixed was changed


def test_turning_the_rules_back_on_revalidates():
    cfg = RunConfig.from_dict({"epochs": 3, "mainrun_rules": False})
    with pytest.raises(ConfigError, match="'epochs'"):
        cfg.replace(mainrun_rules=True)


def test_fixed_field_in_a_file(tmp_path):
    with pytest.raises(ConfigError, match="'epochs'"):
        RunConfig.from_yaml(write(tmp_path, "epochs: 3\n"))
    cfg = RunConfig.from_yaml(write(tmp_path, "epochs: 3\nmainrun_rules: false\n"))
    assert cfg.epochs == 3 and not cfg.comparable


# ---------------------------------------------------------------------- YAML safety
def yaml_refusal(tmp_path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(YamlError) as info:
        RunConfig.from_yaml(path)
    msg = str(info.value)
    assert str(path) in msg                 # every file error names the file
    return msg.replace(str(path), "<file>")  # the rest is the explanation (tmp_path holds the test name)


@pytest.mark.parametrize("text", [
    "lr: !!python/object/apply:os.system ['touch PWNED']\n",
    "!!python/object:mainrun.config.RunConfig {lr: 1}\n",
    "lr: !!python/name:os.system\n",
])
def test_python_tags_are_refused(tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    msg = yaml_refusal(tmp_path, text)
    assert "python/" in msg
    assert not (tmp_path / "PWNED").exists()


def test_duplicate_keys_are_refused(tmp_path):
    msg = yaml_refusal(tmp_path, "lr: 0.1\nn_layer: 2\nlr: 0.2\n")
    assert "duplicate key 'lr'" in msg
    assert "line 3" in msg


def test_aliases_are_refused_billion_laughs(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    t0 = time.perf_counter()
    msg = yaml_refusal(tmp_path, "\n".join(lines) + "\n")
    assert time.perf_counter() - t0 < 2.0
    assert "alias" in msg


def test_a_simple_alias_is_refused(tmp_path):
    assert "alias" in yaml_refusal(tmp_path, "lr: &x 0.1\nmin_lr_frac: *x\n")


def test_merge_key_is_refused(tmp_path):
    assert "alias" in yaml_refusal(tmp_path, "base: &b {lr: 0.1}\n<<: *b\n")


@pytest.mark.parametrize("text, line", [
    ("lr: 0.1\n\tn_layer: 2\n", 2),      # tab-indented key
    ("lr:\t0.1\n", 1),                    # tab after the colon
    ("\tlr: 0.1\n", 1),
])
def test_tabs_give_a_clear_message(tmp_path, text, line):
    msg = yaml_refusal(tmp_path, text)
    assert f"line {line}" in msg
    # PyYAML only says "found character '\\t' that cannot start any token"; the message
    # should say in words that tabs are the problem
    assert "tab" in msg.lower(), msg


@pytest.mark.parametrize("text, kind", [
    ("- lr: 0.1\n", "list"), ("just a string\n", "str"), ("42\n", "int"),
])
def test_non_mapping_top_level_is_refused(tmp_path, text, kind):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml(path)
    msg = str(info.value).replace(str(path), "<file>")
    assert "top level must be a mapping" in msg and kind in msg


def test_non_scalar_key_is_refused(tmp_path):
    yaml_refusal(tmp_path, "? [lr]\n: 0.1\n")


def test_missing_file(tmp_path):
    with pytest.raises(YamlError, match="file not found"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")


def test_directory(tmp_path):
    with pytest.raises(YamlError, match="is a directory"):
        RunConfig.from_yaml(tmp_path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("dataset: caf\xe9.txt\n".encode("latin-1"))
    with pytest.raises(YamlError, match="not a UTF-8"):
        RunConfig.from_yaml(path)


def test_oversized_file(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(YamlError, match="larger than"):
        load_yaml_file(path)


def test_syntax_error_gives_line_and_column(tmp_path):
    msg = yaml_refusal(tmp_path, "lr: 0.1\nn_layer: [1, 2\n")
    assert "not valid YAML" in msg and "line" in msg and "column" in msg


# ---------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("text, key", [
    ("n_layers: 4\n", "n_layers"),
    ("dropout: 1.5\n", "dropout"),
    ("lr: 0.1\nlr: 0.2\n", "lr"),
    ("grad_accum_steps: 0\n", "grad_accum_steps"),
    ("train_seed: -3\n", "train_seed"),
])
def test_cli_bad_config_exits_2_with_a_clean_error(tmp_path, text, key):
    path = write(tmp_path, text, "bad.yaml")
    proc = subprocess.run(cli("mainrun-train", "--config", str(path), "--no-progress",
                              "--log", str(tmp_path / "log.jsonl")),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.replace(str(path), "<file>").splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"'{key}'" in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "val_loss=" not in proc.stdout
    assert not (tmp_path / "log.jsonl").exists()       # it stopped before training


def test_the_checked_in_best_card_loads_and_keeps_the_mainrun_rules():
    from pathlib import Path
    card = Path(__file__).resolve().parent.parent / "studies" / "best-standin.yaml"
    cfg = RunConfig.from_yaml(card)
    assert cfg.comparable and cfg.changed_fixed_fields() == {} and cfg.official
    assert list(load_yaml_file(card)) == list(cfg.to_dict())             # every field, in today's names
    assert (cfg.d_model, cfg.n_layer, cfg.pos_emb, cfg.mlp) == (1024, 7, "rope", "swiglu")


def test_a_trial_stored_with_scaled_residual_init_still_exports_and_trains_the_same_init(tmp_path, capsys):
    """A study keeps each trial's whole config as a dict in the keys of its day; mainrun-export
    rebuilds a RunConfig from it. One stored before init/residual_init/grad_accum_steps/train_seed
    existed exports to today's keys, with the same meaning and the same weights."""
    import optuna
    import torch

    from mainrun.cli import export_main
    from mainrun.model import GPT
    old = {k: v for k, v in RunConfig.from_dict(TINY).to_dict().items()
           if k not in ("train_seed", "init", "residual_init", "grad_accum_steps")}
    old["scaled_residual_init"] = True
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.create_study(study_name="old", storage=storage)
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"config": old}))
    assert export_main(["--study", "old", "--storage", storage, "--out", str(tmp_path / "best.yaml")]) == 0
    assert "exported trial 0" in capsys.readouterr().out
    exported = RunConfig.from_yaml(tmp_path / "best.yaml")
    assert exported == RunConfig.from_dict({**TINY, "residual_init": "scaled"})
    assert "scaled_residual_init" not in (tmp_path / "best.yaml").read_text()
    torch.manual_seed(0)
    then = GPT(RunConfig.from_dict(old), 300).state_dict()
    torch.manual_seed(0)
    now = GPT(exported, 300).state_dict()
    assert all(torch.equal(then[k], now[k]) for k in then)
