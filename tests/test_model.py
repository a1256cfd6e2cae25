"""The GPT model: variants train on CPU, the tied head, the baseline init and size, causality."""
from __future__ import annotations

import math
import pytest
import torch

from helpers import TINY
from mainrun.config import RunConfig
from mainrun.model import GPT, MLP, Dropout

VOCAB = 300


def tiny(**changes) -> RunConfig:
    return RunConfig.from_dict({**TINY, **changes})


VARIANTS = {
    "baseline": {},
    "swiglu": {"mlp": "swiglu"},
    "relu2": {"mlp": "relu2"},
    "rmsnorm": {"norm": "rmsnorm"},
    "rope": {"pos_emb": "rope"},
    "qk_norm": {"qk_norm": True},
    "untied": {"tie_embeddings": False},
    "no_bias": {"bias": False},
    "all": {"mlp": "swiglu", "norm": "rmsnorm", "pos_emb": "rope", "qk_norm": True, "tie_embeddings": False,
            "n_layer": 2},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_forward_backward(name):
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name])
    model = GPT(cfg, VOCAB)
    model.train()
    idx = torch.randint(0, VOCAB, (3, cfg.block_size))
    targets = torch.randint(0, VOCAB, (3, cfg.block_size))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, cfg.block_size, VOCAB)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # a fresh model predicts about uniformly: loss near ln(vocab)
    assert abs(loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) < 0.5
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


def test_variant_modules_are_really_switched():
    m = GPT(tiny(mlp="swiglu", norm="rmsnorm", pos_emb="rope", qk_norm=True, tie_embeddings=False), VOCAB)
    block = m.blocks[0]
    assert isinstance(block.ln1, torch.nn.RMSNorm) and isinstance(m.ln_f, torch.nn.RMSNorm)
    assert hasattr(block.mlp, "gate")
    assert m.pos_emb is None and block.attn.rotary is not None
    assert block.attn.q_norm is not None and block.attn.k_norm is not None
    base = GPT(tiny(), VOCAB)
    assert isinstance(base.blocks[0].ln1, torch.nn.LayerNorm)
    assert not hasattr(base.blocks[0].mlp, "gate") and base.blocks[0].attn.rotary is None
    assert base.pos_emb is not None and base.blocks[0].attn.q_norm is None


def test_swiglu_parameter_count_is_close_to_gelu():
    # at the baseline width: 2/3 of the 4x hidden per branch, rounded up to a multiple of 64
    gelu, swiglu = MLP(RunConfig()), MLP(RunConfig(mlp="swiglu"))
    assert swiglu.up.out_features == swiglu.gate.out_features == 1408
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(n(swiglu) - n(gelu)) / n(gelu) < 0.05


def test_tied_head_shares_storage_with_the_embedding():
    model = GPT(tiny(), VOCAB)
    assert model.head.weight is model.token_emb.weight
    assert model.head.weight.data_ptr() == model.token_emb.weight.data_ptr()
    # counted once
    assert model.num_params() == sum(p.numel() for p in set(model.parameters()))
    with torch.no_grad():
        model.token_emb.weight[5, 0] = 123.0
    assert model.head.weight[5, 0].item() == 123.0


def test_untied_head_is_separate():
    tied, untied = GPT(tiny(), VOCAB), GPT(tiny(tie_embeddings=False), VOCAB)
    assert untied.head.weight.data_ptr() != untied.token_emb.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == VOCAB * 32


@pytest.fixture(scope="module")
def baseline_model():
    torch.manual_seed(1337)
    return GPT(RunConfig(), 16_000)


def test_baseline_parameter_count(baseline_model):
    assert baseline_model.num_params() == 27_172_864


def test_baseline_init(baseline_model):
    m = baseline_model
    for name, module in m.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            w = module.weight
            assert abs(w.mean().item()) < 2e-3, name
            assert w.std().item() == pytest.approx(0.02, rel=0.1), name
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                assert torch.count_nonzero(module.bias) == 0, name
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    assert m.pos_emb.shape == (1, 128, 512)
    assert torch.count_nonzero(m.pos_emb) == 0
    # the baseline has biases, a learned position embedding and a tied head
    assert m.blocks[0].attn.qkv.bias is not None
    assert m.head.weight is m.token_emb.weight


def test_baseline_shapes(baseline_model):
    m = baseline_model
    assert len(m.blocks) == 6
    assert m.token_emb.weight.shape == (16_000, 512)
    assert m.blocks[0].mlp.up.weight.shape == (2048, 512)        # 4x GELU MLP
    assert m.blocks[0].attn.n_head == 8 and m.blocks[0].attn.head_dim == 64


@pytest.mark.parametrize("name", ["baseline", "rope", "all"])
def test_attention_is_causal(name):
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name])
    model = GPT(cfg, VOCAB).eval()
    T = cfg.block_size
    idx = torch.randint(0, VOCAB, (2, T))
    with torch.no_grad():
        before, _ = model(idx)
        for t in (1, T // 2, T - 1):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % VOCAB
            after, _ = model(changed)
            # Earlier rows see identical inputs through the same kernels: anything beyond a few
            # ulps of the logits' scale is a leak (measured: 0 under every CPU kernel set).
            few_ulps = 4 * torch.finfo(torch.float32).eps * before.abs().max().item()
            torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=few_ulps)
            # and the changed position itself does see the change
            assert (after[:, t] - before[:, t]).abs().max() > 1e-4


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    torch.manual_seed(0)
    model = GPT(tiny(dropout=0.5), VOCAB)
    idx = torch.randint(0, VOCAB, (2, 16))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx)[0], model(idx)[0])
        model.train()
        assert not torch.equal(model(idx)[0], model(idx)[0])


def test_a_compiled_dropout_reads_its_rate_at_run_time(tmp_path, monkeypatch):
    """One compiled graph serves every rate (a search samples dropout), and it still drops: a
    fraction p of the inputs, the rest scaled by 1 / (1 - p); a new draw each call in train
    mode, the input itself in eval mode."""
    from torch._dynamo.utils import counters
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.compiler.reset()
    counters.clear()
    ones = torch.ones(200_000)
    for p in (0.5, 0.2):
        dropout = Dropout(p)
        dropout.compile()
        first, second = dropout(ones), dropout(ones)
        dropped = (first == 0).float().mean().item()
        assert dropped == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / ones.numel()))   # 5 sigma
        assert torch.all(first[first != 0] == torch.tensor(1 / (1 - p), dtype=torch.float32))
        assert not torch.equal(first, second)
        dropout.eval()
        assert torch.equal(dropout(ones), ones)
    assert counters["stats"]["unique_graphs"] == 1      # the second rate compiled nothing (eval: no graph)


def test_shorter_sequences_and_summed_loss():
    torch.manual_seed(0)
    model = GPT(tiny(dropout=0.0), VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 10))
    targets = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        logits, mean = model(idx, targets)
        _, total = model(idx, targets, reduction="sum")
        manual = torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), targets.view(-1), reduction="sum")
    assert logits.shape == (2, 10, VOCAB)
    # a sum and a mean of 20 fp32 terms, reduced in whatever order the kernels choose: at most
    # 20 roundings apart
    assert total.item() == pytest.approx(mean.item() * 20, rel=20 * torch.finfo(torch.float32).eps)
    assert total.item() == manual.item()               # the same kernel on the same logits


def test_scaled_residual_init():
    cfg = RunConfig.from_dict({"n_layer": 8, "d_model": 256, "n_head": 4, "residual_init": "scaled"})
    torch.manual_seed(0)
    model = GPT(cfg, 1000)
    expected = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        for proj in (block.attn.proj, block.mlp.down):
            assert proj.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_an_old_scaled_residual_init_config_builds_the_same_weights():
    """A study stores each trial's config with the keys of its day; the legacy key must give
    the very model that mainrun built from it then (GPT-2's redraw of the projections)."""
    old = {k: v for k, v in tiny(n_layer=2).to_dict().items() if k not in ("init", "residual_init")}
    torch.manual_seed(0)
    legacy = GPT(RunConfig.from_dict({**old, "scaled_residual_init": True}), VOCAB)
    torch.manual_seed(0)
    plain = GPT(tiny(n_layer=2), VOCAB)
    # written out as the old GPT.__init__ did it: everything N(0, 0.02), then the projections
    for block in plain.blocks:
        for proj in (block.attn.proj, block.mlp.down):
            torch.nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * 2))
    for (name, a), (_, b) in zip(legacy.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def test_kaiming_init_scales_the_blocks_by_fan_in_and_keeps_the_embeddings():
    cfg = RunConfig.from_dict({"n_layer": 2, "d_model": 256, "n_head": 4, "init": "kaiming", "mlp": "swiglu",
                               "tie_embeddings": False})
    torch.manual_seed(0)
    model = GPT(cfg, 1000)
    for name, module in model.blocks.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.weight.std().item() == pytest.approx(math.sqrt(2 / module.in_features), rel=0.05), name
            assert not module.bias.any()
    for outside in (model.token_emb.weight, model.head.weight):
        assert outside.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = GPT(cfg.replace(residual_init="scaled"), 1000)       # GPT-2's scaling, of kaiming's std
    down = scaled.blocks[0].mlp.down
    assert down.weight.std().item() == pytest.approx(math.sqrt(2 / down.in_features) / math.sqrt(4), rel=0.05)


@pytest.mark.parametrize("init", ["normal", "kaiming"])
def test_zero_residual_init_makes_every_block_the_identity_and_draws_the_rest_as_before(init):
    torch.manual_seed(0)
    zero = GPT(tiny(init=init, residual_init="zero", n_layer=2, dropout=0.0), VOCAB)
    torch.manual_seed(0)
    same = GPT(tiny(init=init, n_layer=2, dropout=0.0), VOCAB)
    for (name, a), (_, b) in zip(zero.named_parameters(), same.named_parameters()):
        if name.endswith(("attn.proj.weight", "mlp.down.weight")):
            assert not a.any(), name
        else:
            assert torch.equal(a, b), name                     # the same random draws for everything else
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        for block in zero.blocks:
            assert torch.equal(block(x), x)
    # one update later the projections have moved, and the gradient reaches the whole block then
    opt = torch.optim.SGD(zero.parameters(), lr=0.1)
    idx = torch.randint(0, VOCAB, (2, 16))
    for _ in range(2):
        opt.zero_grad()
        zero(idx, idx)[1].backward()
        opt.step()
    assert all(p.grad.abs().sum() > 0 for p in zero.parameters())
