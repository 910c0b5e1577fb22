"""The MLP speculator against fms-extras' maths, written out here from the paper and the
reference's definitions (``MLPSpeculator.forward``, ``LayerNormParameterized(use_mean=False)``,
``tie_wts``, ``scale_input``), not from specbench's code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from specbench.drafts import build_draft
from specbench.features import LAST
from specbench.targets.info import TargetInfo

V, VD, D, INNER, L, N = 50, 30, 24, 16, 9, 4  # vocabs, hidden, inner, length, stages
EPS = 1e-6


def make_info() -> TargetInfo:
    g = torch.Generator().manual_seed(0)
    return TargetInfo(
        hidden_size=D,
        vocab_size=V,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=2 * D,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        embed_tokens=torch.randn(V, D, generator=g),
        lm_head=torch.randn(V, D, generator=g),
        draft_to_target=torch.randperm(V, generator=g)[:VD],
    )


def reference_logits(sd: dict, h: torch.Tensor, tokens: torch.Tensor, tied: bool, scaled: bool):
    """fms-extras' training forward. ``h [B, L, D]`` target states, ``tokens [B, L + N]``
    draft-vocab ids (stage j reads ``tokens[:, j : j + L]``); returns ``[B, L, N, VD]``.

    Tied (``tie_wts``): embedding, head and norm of stage 0 serve every stage; the
    projections of stages 2.. are stage 1's."""
    w_s = 0.5 ** (0.5 / N)  # state weight: state_0 is half the state's magnitude at stage N
    w_e = math.sqrt(1 - w_s**2)

    def norm(x, w=None, b=None):  # RMS norm: no mean subtraction, then scale and shift
        x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
        return x if w is None else x * w + b

    state = norm(h) / math.sqrt(2) if scaled else h
    out = []
    for j in range(N):
        e, p = (0, min(j, 1)) if tied else (j, j)
        z = sd[f"emb.{e}.weight"][tokens[:, j : j + L]] * (w_e * math.sqrt(INNER / 2))
        pre = state @ sd[f"proj.{p}.weight"].T * w_s + z
        state = F.gelu(norm(pre, sd[f"ln.{e}.weight"], sd[f"ln.{e}.bias"]))
        out.append(state @ sd[f"head.{e}.weight"].T)
    return torch.stack(out, dim=2)


@pytest.mark.parametrize("tied, scaled", [(False, False), (True, True), (False, True)])
def test_forward_matches_reference_maths(tied, scaled):
    info = make_info()
    torch.manual_seed(1)
    hp = {"num_stages": N, "inner_dim": INNER, "tie_weights": tied, "scale_input": scaled}
    draft = build_draft("mlp_speculator", info, **hp)
    with torch.no_grad():  # norm weights start at 1 and biases at 0: make both matter
        for name, p in draft.named_parameters():
            if name.startswith("ln."):
                p.copy_(torch.randn(p.shape) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    sd = draft.state_dict()
    if tied:  # one embedding, head and norm; two projections (from the target, then shared)
        assert {k.rsplit(".", 1)[0] for k in sd} == {"emb.0", "head.0", "ln.0", "proj.0", "proj.1"}
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, L, 4, D, generator=g) * 3 + 1  # nonzero mean: centring would show
    ids = info.draft_to_target[torch.randint(0, VD, (2, L), generator=g)]
    out = draft.forward_train(feats, ids, torch.ones(2, L, dtype=torch.bool), N)
    t2d = torch.full((V,), VD)
    t2d[info.draft_to_target] = torch.arange(VD)
    tokens = t2d[F.pad(ids, (0, N))][:, 1:]  # stage j (0-based) reads x_{i+1+j}
    want = reference_logits(sd, feats[..., LAST, :], tokens, tied, scaled)
    delta = (out.logits - want).abs().max().item()
    print(f"mlp_speculator tied={tied} scale_input={scaled}: max |Δ logits| = {delta:.2e}")
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)


def test_norm_is_not_mean_centred():
    """The stage norm keeps a constant offset's direction (a LayerNorm would zero it)."""
    draft = build_draft("mlp_speculator", make_info(), num_stages=2, inner_dim=INNER)
    x = torch.full((3, INNER), 5.0)
    torch.testing.assert_close(draft.ln[0](x), torch.ones(3, INNER), atol=1e-5, rtol=1e-5)


def test_tied_speculator_is_smaller_and_saves(tmp_path):
    from specbench.drafts import load_draft

    info = make_info()
    untied = build_draft("mlp_speculator", info, num_stages=N, inner_dim=INNER)
    tied = build_draft("mlp_speculator", info, num_stages=N, inner_dim=INNER, tie_weights=True)
    emb, proj, head, ln = (VD + 1) * INNER, INNER * INNER, VD * INNER, 2 * INNER
    assert untied.num_trainable_parameters() - tied.num_trainable_parameters() == (
        (N - 1) * (emb + head + ln) + (N - 2) * proj
    )
    tied.save(tmp_path)
    loaded = load_draft(tmp_path, info)
    assert loaded.hparams["tie_weights"] is True
    pairs = zip(loaded.parameters(), tied.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
