"""Property tests over random shapes and vocabularies: every loss is finite, and each
divergence-type loss is minimised (and stationary) where the draft equals the target.

The specs come from the registry (see test_losses.py): a base loss that needs no labels is
divergence-type, alone or under a position or row weighting; the rest only have to be
finite."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_losses import BASES, EVERY, WEIGHTINGS, ZERO_EPS, variants

from specbench.losses import LOSSES, build

F64 = torch.float64
LABEL_FREE = [n for n in BASES if not build(n).needs_labels]
DIVERGENCES = (
    [v for n in LABEL_FREE for v in variants(n)]
    + [
        "lk_lambda(lambda_scope=token,eta=10)",
        "lk_lambda(fixed=0.5)",
    ]
    + [f"kl+{w}" for w in WEIGHTINGS if LOSSES[w].kind in ("position", "row")]
)
# eps=0 is for masked rows only (test_losses.py): a valid row with α = 0 has no finite −log α
EVERYTHING = DIVERGENCES + [s for s in EVERY if s not in DIVERGENCES + ZERO_EPS]


@st.composite
def batches(draw):
    """Random [N, K, V] problems: a target over V + extra tokens sliced to V (possibly with
    −inf entries), draft logits of random scale, a random mask and labels (some −100)."""
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    v, extra = draw(st.integers(2, 40)), draw(st.integers(0, 6))
    seed, scale = draw(st.integers(0, 2**31)), draw(st.sampled_from([0.1, 1.0, 4.0, 15.0]))
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, v + extra, generator=g, dtype=F64)
    if draw(st.booleans()):
        logits[..., 0] = -torch.inf  # a token the target never emits
    t = logits.log_softmax(-1)[..., :v]
    z = scale * torch.randn(n, k, v, generator=g, dtype=F64)
    mask = torch.rand(n, k, generator=g) < 0.8
    labels = torch.randint(0, v, (n, k), generator=g)
    labels[torch.rand(n, k, generator=g) < 0.2] = -100
    return z, t, mask, labels


def call(spec, z, t, mask, labels):
    z = z.detach().clone().requires_grad_()
    loss = build(spec)(draft_logits=z, target_logits=t, mask=mask, labels=labels)
    (g,) = torch.autograd.grad(loss, z)
    return loss.detach(), g


@settings(max_examples=100, deadline=None)
@given(batches(), st.sampled_from(EVERYTHING))
def test_losses_are_finite(batch, spec):
    loss, g = call(spec, *batch)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert (g[~batch[2]] == 0).all()


@settings(max_examples=100, deadline=None)
@given(batches(), st.sampled_from(DIVERGENCES))
def test_draft_equal_to_target_is_a_minimum(batch, spec):
    z, t, mask, labels = batch
    # q = softmax(t) = p̃ (up to e^-80) is the minimiser: KL = 0 and α = Σ min(p, p̃) = Σ p is maximal
    at_target, g = call(spec, t.clamp_min(-80), t, mask, labels)  # draft logits are finite
    # α-type terms are not differentiable where a = q (1 − α has a kink); the gradient is
    # well defined at q = p̃ only when every row has p < p̃ strictly (a truncated target)
    truncated = bool((t.exp().sum(-1)[mask] < 1 - 1e-6).all())
    if spec == "kl" or (truncated and "p_tilde" not in spec):
        assert g.abs().max() < 1e-9  # stationary
    if spec.startswith(("tvdpp", "lk_lambda(")) and "fixed" not in spec:
        return  # surrogate / data-dependent λ: only stationarity is meaningful
    elsewhere, _ = call(spec, z, t, mask, labels)
    assert elsewhere >= at_target - 1e-9
    if (t.exp().sum(-1) > 1 - 1e-12).all() and not spec.startswith("lk_alpha"):
        assert abs(at_target) < 1e-9  # full draft vocabulary: zero at q = p
