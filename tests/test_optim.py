"""The optimizers a run config names: which parameters each takes, and with what weight decay."""
from __future__ import annotations

import pytest
import torch

from helpers import TINY
from mainrun.config import RunConfig
from mainrun.model import GPT
from mainrun.optim import make_optimizer, param_groups, set_lr

V = 300


def tiny(**changes) -> RunConfig:
    return RunConfig.from_dict({**TINY, **changes})


def test_decay_all_false_spares_norms_biases_and_embeddings():
    cfg = RunConfig.from_dict({**TINY, "decay_all": False, "weight_decay": 0.1, "optimizer": "adamw"})
    model = GPT(cfg, 300)
    decay, rest = param_groups(cfg, model)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.token_emb.weight) not in decayed and id(model.pos_emb) not in decayed
    for module in model.modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
            assert all(id(p) not in decayed for p in module.parameters())
        if isinstance(module, torch.nn.Linear) and module is not model.head:
            assert id(module.weight) in decayed
            assert module.bias is None or id(module.bias) not in decayed
    assert rest["weight_decay"] == 0.0
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
    opt = make_optimizer(cfg, model, torch.device("cpu"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    default = param_groups(RunConfig.from_dict(TINY), model)
    assert len(default) == 1                           # the baseline decays everything


@pytest.mark.parametrize("decay_all", [True, False])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(decay_all):
    cfg = tiny(optimizer="muon", weight_decay=0.1, decay_all=decay_all, tie_embeddings=False)
    model = GPT(cfg, V)
    opt = make_optimizer(cfg, model, torch.device("cpu"))
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = [p for g in muon.param_groups for p in g["params"]]
    in_adamw = [p for g in adamw.param_groups for p in g["params"]]
    blocks_linear = [m.weight for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert {id(p) for p in in_muon} == {id(p) for p in blocks_linear}
    assert all(p.ndim == 2 for p in in_muon)
    everything = {id(p) for p in model.parameters()}
    assert len(in_muon) + len(in_adamw) == len(everything)               # each parameter exactly once
    assert {id(p) for p in in_muon} | {id(p) for p in in_adamw} == everything
    assert id(model.token_emb.weight) in {id(p) for p in in_adamw}      # embeddings and head stay on AdamW
    assert id(model.head.weight) in {id(p) for p in in_adamw}
    decays = {id(p): g["weight_decay"] for g in adamw.param_groups for p in g["params"]}
    assert decays[id(model.token_emb.weight)] == (0.1 if decay_all else 0.0)
    assert decays[id(model.head.weight)] == 0.1                          # a matrix: decayed either way
    assert muon.param_groups[0]["weight_decay"] == 0.1
    set_lr(opt, 0.5)
    assert muon.param_groups[0]["lr"] == 0.5 and not isinstance(muon.param_groups[0]["lr"], torch.Tensor)
    assert all(float(g["lr"]) == 0.5 for g in adamw.param_groups)
