"""Loss library: values and gradients on hand-computed distributions (float64), masking,
weighting, chunking, dtypes and the data-parallel ᾱ. Spec language: test_losses_spec.py.

The parametrized tests run over the registry (``specbench.losses.LOSSES``): every base loss
with its default parameters and every other choice of its ``Literal``/``bool`` parameters,
each weighting on ``kl``, all weightings at once, and ``eps=0`` where a loss has ``eps``; a
newly registered loss is tested without editing this file."""

from __future__ import annotations

import math
import os
import tempfile
import typing

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from specbench.losses import LOSSES, Rows, build, canonical, core, suffix_survival
from specbench.losses.eager import LOG2, STATISTICS, eager_row_stats
from specbench.losses.rowstats import STAT_NAMES, Request, row_stats

F64 = torch.float64


def _choices(hint) -> list:
    """Values of a parameter worth a spec each: the choices of a ``Literal``, or a bool."""
    if hint is bool:
        return [True, False]
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    return []


def variants(name: str) -> list[str]:
    """``name`` with default parameters, then once per other choice of each parameter."""
    out = [name]
    for key, (hint, default) in LOSSES[name].params.items():
        for value in _choices(hint):
            if value != default:
                text = str(value).lower() if isinstance(value, bool) else value
                out.append(f"{name}({key}={text})")
    return out


def _unique(specs: list[str]) -> list[str]:
    seen, out = set(), []
    for spec in specs:
        if canonical(spec) not in seen:
            seen.add(canonical(spec))
            out.append(spec)
    return out


BASES = [n for n, ld in LOSSES.items() if ld.kind == "base"]
WEIGHTINGS = [n for n, ld in LOSSES.items() if ld.kind != "base"]
# one base with every weighting at once (at most one position weighting per spec)
ALL_WEIGHTINGS = "ce+" + "+".join(
    [n for n in WEIGHTINGS if LOSSES[n].kind == "position"][:1]
    + [n for n in WEIGHTINGS if LOSSES[n].kind != "position"]
)
ZERO_EPS = [f"{n}(eps=0)" for n in BASES if "eps" in LOSSES[n].params]
EVERY = _unique(
    [v for n in BASES for v in variants(n)]
    + [f"kl+{w}" for w in WEIGHTINGS]
    + [
        ALL_WEIGHTINGS,
        "lk_lambda(fixed=0.5,alpha_on=p_tilde)",
        "ce+decay(gamma=7)+focal(alpha=0.3)+chain(alpha=40)",
    ]
    + ZERO_EPS
)


def inputs(n=3, k=2, v=7, extra=2, seed=0, scale=1.5):
    """Draft logits, target log-probs over ``v + extra`` sliced to ``v``, mask, labels."""
    g = torch.Generator().manual_seed(seed)
    z = (scale * torch.randn(n, k, v, generator=g, dtype=F64)).requires_grad_()
    t = (scale * torch.randn(n, k, v + extra, generator=g, dtype=F64)).log_softmax(-1)[..., :v]
    mask = torch.ones(n, k, dtype=torch.bool)
    labels = torch.randint(0, v, (n, k), generator=g)
    return z, t, mask, labels


def run(spec, z, t, mask, labels=None, **kw):
    return build(spec, **kw)(draft_logits=z, target_logits=t, mask=mask, labels=labels)


def grad(spec, z, t, mask, labels=None, **kw):
    (g,) = torch.autograd.grad(run(spec, z, t, mask, labels, **kw), z)
    return g


def one(q, p):
    """A single row (N = K = 1): draft logits with softmax ``q``, target log-probs ``log p``."""
    z = torch.tensor(q, dtype=F64).log().view(1, 1, -1).requires_grad_()
    t = torch.tensor(p, dtype=F64).log().view(1, 1, -1)
    return z, t, torch.ones(1, 1, dtype=torch.bool)


# q and p of the hand computations: α = 0.2 + 0.3 + 0.15 = 0.65, r = 1{p > q} = (1, 1, 0),
# S = Σ q r = 0.5, ∇_z α = q ⊙ (r − S) = (0.1, 0.15, −0.25).
Q, P = [0.2, 0.3, 0.5], [0.5, 0.35, 0.15]
GRAD_ALPHA = torch.tensor([0.1, 0.15, -0.25], dtype=F64)


# --- hand-computed values and gradients ----------------------------------------------


def test_alpha_is_one_minus_tv():
    z, t, mask = one(Q, P)
    tv_half_l1 = 0.5 * sum(abs(a - b) for a, b in zip(Q, P, strict=True))  # 0.35
    assert run("tv", z, t, mask).item() == pytest.approx(tv_half_l1, abs=1e-12)
    assert run("tv", z, t, mask).item() == pytest.approx(1 - 0.65, abs=1e-12)
    assert run("lk_alpha(eps=0)", z, t, mask).item() == pytest.approx(-math.log(0.65), abs=1e-12)
    torch.testing.assert_close(grad("tv", z, t, mask).view(-1), -GRAD_ALPHA)


def test_grad_of_minus_log_alpha_is_grad_tv_over_alpha():
    z, t, mask, _ = inputs(n=4, k=1, v=9)
    for on in ("p", "p_tilde"):
        for n in range(4):  # one row per call: α is that row's acceptance
            zn, tn, mn = z[n : n + 1], t[n : n + 1], mask[n : n + 1]
            alpha = 1 - run(f"tv(alpha_on={on})", zn, tn, mn).item()
            g_log = grad(f"lk_alpha(eps=0,alpha_on={on})", zn, tn, mn)
            torch.testing.assert_close(g_log, grad(f"tv(alpha_on={on})", zn, tn, mn) / alpha)


def test_kl_value_and_gradient_q_minus_p_tilde():
    # target over 4 tokens, the draft vocabulary keeps the first 3: p̃ = p / 0.8
    p_full = [0.4, 0.3, 0.1, 0.2]
    z, _, mask = one(Q, P)
    t = torch.tensor(p_full, dtype=F64).log()[:3].view(1, 1, 3)
    pt = torch.tensor([0.5, 0.375, 0.125], dtype=F64)
    q = torch.tensor(Q, dtype=F64)
    want = float((pt * (pt / q).log()).sum())
    assert run("kl", z, t, mask).item() == pytest.approx(want, abs=1e-12)
    torch.testing.assert_close(grad("kl", z, t, mask).view(-1), q - pt)
    # α on the original p (0.2 + 0.3 + 0.1) vs on p̃ (0.2 + 0.3 + 0.125)
    assert run("tv", z, t, mask).item() == pytest.approx(1 - 0.6, abs=1e-12)
    assert run("tv(alpha_on=p_tilde)", z, t, mask).item() == pytest.approx(1 - 0.625, abs=1e-12)


def test_reverse_kl_value_and_gradient_by_hand():
    z, t, mask = one(Q, P)
    q = torch.tensor(Q, dtype=F64)
    d = [math.log(a / b) for a, b in zip(Q, P, strict=True)]  # log(q/p)
    want = 0.2 * math.log(0.2 / 0.5) + 0.3 * math.log(0.3 / 0.35) + 0.5 * math.log(0.5 / 0.15)
    assert run("rkl", z, t, mask).item() == pytest.approx(want, abs=1e-12)
    g_want = q * (torch.tensor(d, dtype=F64) - want)  # q ⊙ (log(q/p) − KL(q‖p))
    torch.testing.assert_close(grad("rkl", z, t, mask).view(-1), g_want)
    # truncated target: the reverse KL is against p̃ = p / 0.8
    t4 = torch.tensor([0.4, 0.3, 0.1, 0.2], dtype=F64).log()[:3].view(1, 1, 3)
    pt = [0.5, 0.375, 0.125]
    want = sum(a * math.log(a / b) for a, b in zip(Q, pt, strict=True))
    assert run("rkl", z, t4, mask).item() == pytest.approx(want, abs=1e-12)


def test_jensen_shannon_value_gradient_and_symmetry_by_hand():
    z, t, mask = one(Q, P)
    m = [(a + b) / 2 for a, b in zip(Q, P, strict=True)]  # (0.35, 0.325, 0.325)
    kl_pm = sum(b * math.log(b / c) for b, c in zip(P, m, strict=True))
    kl_qm = sum(a * math.log(a / c) for a, c in zip(Q, m, strict=True))
    want = 0.5 * kl_pm + 0.5 * kl_qm
    assert run("jsd", z, t, mask).item() == pytest.approx(want, abs=1e-12)
    c = torch.tensor([math.log(a / b) for a, b in zip(Q, m, strict=True)], dtype=F64)
    g_want = 0.5 * torch.tensor(Q, dtype=F64) * (c - kl_qm)  # ½ q ⊙ (log(q/m) − KL(q‖m))
    torch.testing.assert_close(grad("jsd", z, t, mask).view(-1), g_want)
    swapped = run("jsd", *one(P, Q))  # symmetric in p and q; bounded by log 2
    assert swapped.item() == pytest.approx(want, abs=1e-12)
    z2, t2, _ = one([0.5, 0.5 - 1e-300, 1e-300], [1e-300, 1e-300, 1.0 - 2e-300])
    assert run("jsd", z2, t2, mask).item() == pytest.approx(LOG2, abs=1e-9)


def test_lambda_is_exp_minus_eta_mean_alpha_without_gradient():
    z, t, mask, _ = inputs(n=5, k=1, v=6, extra=0)
    kl = torch.stack([run("kl", z[n : n + 1], t[n : n + 1], mask[:1]) for n in range(5)])
    tv = torch.stack([run("tv", z[n : n + 1], t[n : n + 1], mask[:1]) for n in range(5)])
    alpha = 1 - tv.detach()
    for spec, lam in [
        ("lk_lambda(eta=3)", torch.exp(-3 * alpha.mean()).expand(5)),
        ("lk_lambda(eta=10)", torch.exp(-10 * alpha.mean()).expand(5)),
        ("lk_lambda(lambda_scope=token)", torch.exp(-3 * alpha)),
        ("lk_lambda(fixed=0.5)", torch.full((5,), 0.5, dtype=F64)),
    ]:
        want = (lam * kl + (1 - lam) * tv).mean()  # λ is a constant here: no gradient
        assert run(spec, z, t, mask).item() == pytest.approx(want.item(), abs=1e-12)
        (g_want,) = torch.autograd.grad(want, z, retain_graph=True)
        torch.testing.assert_close(grad(spec, z, t, mask), g_want)


def test_tvdpp_advantage_normalisation_by_hand():
    z, t, mask = one(Q, P)
    # scope=token: μ = S = 0.5, σ = sqrt(S(1 − S)) = 0.5, r̂ = (r − μ)/σ = (1, 1, −1)
    want = -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) - 0.5 * math.log(0.5))
    assert run("tvdpp(scope=token)", z, t, mask).item() == pytest.approx(want, abs=1e-12)
    g = grad("tvdpp(scope=token)", z, t, mask).view(-1)
    torch.testing.assert_close(g, -GRAD_ALPHA / 0.5)  # = ∇TV/σ: the baseline cancels


def test_tvdpp_position_scope_pools_the_reward():
    z, t, mask, _ = inputs(n=4, k=1, v=8)
    q, p = z.softmax(-1), t.exp()
    r = (p > q).to(F64)
    s = (q * r).sum(-1).detach()
    mu = s.mean()
    sigma = (mu * (1 - mu)).sqrt()
    r_hat = (r - mu) / sigma
    want = -(q.detach() * r_hat * q.log()).sum(-1).mean()
    assert run("tvdpp", z, t, mask).item() == pytest.approx(want.item(), abs=1e-12)
    (g_want,) = torch.autograd.grad(want, z)
    torch.testing.assert_close(grad("tvdpp", z, t, mask), g_want)


def test_ce_ignores_labels_outside_the_draft_vocab():
    z, t, mask, labels = inputs(n=2, k=1)
    labels[1, 0] = -100
    want = -z[0, 0].log_softmax(-1)[labels[0, 0]]
    assert run("ce", z, t, mask, labels).item() == pytest.approx(want.item(), abs=1e-12)


def test_chain_gradient_wrt_log_q_is_the_dpace_suffix_sum():
    z, t, mask, labels = inputs(n=2, k=4, v=5)
    lq = z.log_softmax(-1).gather(-1, labels[..., None])[..., 0]
    # ∂L/∂z_k = c_k (onehot(y_k) − q_k), so c_k = (∂L/∂z_k)[y_k] / (1 − q_k(y_k))
    g = grad("kl(gamma=1)+chain(alpha=40)", z, t, mask, labels) - grad("kl(gamma=1)", z, t, mask)
    c = g.gather(-1, labels[..., None])[..., 0] / (1 - lq.exp())
    want = -40 / (2 * 4) * suffix_survival(lq.detach())
    torch.testing.assert_close(c, want)
    # and suffix_survival is that gradient in general
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    (gx,) = torch.autograd.grad(torch.exp(torch.cumsum(x, -1)).sum(), x)
    torch.testing.assert_close(gx, suffix_survival(x.detach()))
    assert suffix_survival(torch.log(torch.tensor([0.5, 0.5], dtype=F64))).tolist() == [0.75, 0.25]


def test_dpace_weights_the_per_position_loss():
    z, t, mask, labels = inputs(n=3, k=3, v=6)
    kl = torch.stack(
        [
            torch.stack(
                [
                    run("kl", z[n : n + 1, k : k + 1], t[n : n + 1, k : k + 1], mask[:1, :1])
                    for k in range(3)
                ]
            )
            for n in range(3)
        ]
    )
    q = z.softmax(-1).gather(-1, labels[..., None])[..., 0].detach()
    w = suffix_survival(torch.log(0.5 * q + 0.5))
    want = ((w * kl).mean(0) * 0.8 ** torch.arange(3, dtype=F64)).sum()
    assert run("kl+dpace", z, t, mask, labels).item() == pytest.approx(want.item(), abs=1e-12)


def test_dpace_passes_over_masked_positions():
    z, t, mask, labels = inputs(n=2, k=4, v=6)
    mask[0, 1] = False  # interior: the survival product runs on past it
    mask[1, 2:] = False  # tail: same as ending the block there
    labels[1, 1] = -100  # valid, not in the draft vocab: q(y) = 0, q̃ = 1 − mix
    lq = z.log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0].detach()
    qm = 0.3 * lq.exp() + 0.7
    qm[1, 1] = 0.7
    p0 = [qm[0, 0], qm[0, 0] * qm[0, 2], qm[0, 0] * qm[0, 2] * qm[0, 3]]  # valid: 0, 2, 3
    p1 = [qm[1, 0], qm[1, 0] * qm[1, 1]]  # valid: 0, 1
    want = torch.tensor(
        [[sum(p0), 0, p0[1] + p0[2], p0[2]], [p1[0] + p1[1], p1[1], 0, 0]], dtype=F64
    )
    rows = Rows(mask=mask, label_ok=mask & (labels >= 0), logq_y=lq)
    torch.testing.assert_close(LOSSES["dpace"].fn(rows, mix=0.3), want)
    # and the loss: Σ_k (1/N_k) Σ_n W·KL
    kl = torch.stack(
        [
            torch.stack(
                [
                    run("kl", z[n : n + 1, k : k + 1], t[n : n + 1, k : k + 1], mask[:1, :1])
                    for k in range(4)
                ]
            )
            for n in range(2)
        ]
    )
    want_loss = ((want * kl).sum(0) / mask.sum(0)).sum()
    got = run("kl(gamma=1)+dpace(mix=0.3)", z, t, mask, labels)
    assert got.item() == pytest.approx(want_loss.item(), abs=1e-12)


def test_focal_touches_only_the_first_wrong_position():
    z, t, mask, labels = inputs(n=3, k=4, v=5)
    greedy = z.argmax(-1)
    labels = greedy.clone()
    labels[0, 1] = (greedy[0, 1] + 1) % 5  # row 0: first error at position 1 (and 3)
    labels[0, 3] = (greedy[0, 3] + 1) % 5
    labels[1, 2] = -100  # row 1: first "error" is a label outside the draft vocab: no term
    labels[1, 3] = (greedy[1, 3] + 1) % 5  # row 2: all correct
    diff = grad("kl+focal(alpha=0.3)", z, t, mask, labels) - grad("kl", z, t, mask)
    touched = diff.abs().sum(-1) > 0
    assert touched.nonzero().tolist() == [[0, 1]]
    term = run("kl+focal(alpha=0.3)", z, t, mask, labels) - run("kl", z, t, mask)
    want = 0.3 * -z[0, 1].log_softmax(-1)[labels[0, 1]] / 3
    assert term.item() == pytest.approx(want.item(), abs=1e-12)


# --- masking, weighting, dtypes, chunking --------------------------------------------


@pytest.mark.parametrize("spec", EVERY)
def test_masked_positions_contribute_nothing(spec):
    z, t, mask, labels = inputs(n=4, k=3)
    mask[1, 2] = mask[3, 0] = False
    mask[:, 1] = False  # a position with no valid row adds 0, not NaN
    z2, t2 = z.detach().clone(), t.clone()
    z2[~mask] = 1e3 * torch.randn_like(z2[~mask])
    t2[~mask] = -math.inf
    labels2 = labels.clone()
    labels2[~mask] = -100
    z2.requires_grad_()
    a = run(spec, z, t, mask, labels)
    b = run(spec, z2, t2, mask, labels2)
    assert torch.isfinite(b) and b.item() == pytest.approx(a.item(), abs=1e-10)
    g = grad(spec, z2, t2, mask, labels2)
    assert torch.isfinite(g).all() and (g[~mask] == 0).all()


@pytest.mark.parametrize("n", [0, 3])
def test_nothing_valid_gives_zero(n):
    z, t, mask, labels = inputs(n=n, k=2)
    for spec in EVERY:
        loss = run(spec, z, t, torch.zeros_like(mask), labels)
        assert loss.item() == 0 and (grad(spec, z, t, torch.zeros_like(mask), labels) == 0).all()


@pytest.mark.parametrize("base", BASES)
def test_head_decay_weights_positions(base):
    z, t, mask, labels = inputs(n=3, k=3)
    per_k = [
        run(base, z[:, k : k + 1], t[:, k : k + 1], mask[:, :1], labels[:, k : k + 1])
        for k in range(3)
    ]
    per_k = torch.stack(per_k).detach()
    for spec, w in [
        (base, 0.8 ** torch.arange(3, dtype=F64)),
        (f"{base}(gamma=1.0)", torch.ones(3)),
        (f"{base}+decay(gamma=7)", torch.exp(-torch.arange(3, dtype=F64) / 7)),
    ]:
        want = (w.to(F64) * per_k).sum()
        assert run(spec, z, t, mask, labels).item() == pytest.approx(want.item(), abs=1e-12)


@pytest.mark.parametrize("spec", ZERO_EPS + BASES)
def test_padded_rows_with_zero_alpha_are_finite_with_zero_gradient(spec):
    """A padded row (−inf target log-probs: α = 0, Σp = 0) adds nothing, not NaN, even with
    ``eps=0``: statistics are masked before any log or division."""
    z, t, mask, labels = inputs(n=4, k=3)
    mask[2:] = False  # padded rows
    mask[:, 2] = False  # and a position with no valid row
    t = torch.where(mask[..., None], t, -math.inf)
    labels[~mask] = -100
    z = z.detach().masked_fill(~mask[..., None], 0.0).requires_grad_()
    loss = run(spec, z, t, mask, labels)
    g = grad(spec, z, t, mask, labels)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and (g[~mask] == 0).all()
    want = run(spec, z[:2, :2], t[:2, :2], mask[:2, :2], labels[:2, :2])
    assert loss.item() == pytest.approx(want.item(), abs=1e-12)


def eager_only(z, t, y, req, chunk_rows=None):
    """``row_stats`` with every statistic from its eager definition (no fused kernel)."""
    dtype = torch.float64 if torch.float64 in (z.dtype, t.dtype) else torch.float32
    return eager_row_stats(z, t, y, req.names, req.alpha_on, dtype)


@pytest.mark.parametrize("alpha_on", ["p", "p_tilde"])
@pytest.mark.parametrize("name", STAT_NAMES)
def test_every_fused_statistic_equals_its_eager_twin(name, alpha_on):
    """Value and gradient of each fused statistic (chunked, closed-form backward) against
    its definition in :mod:`specbench.losses.eager` (autograd), on rows with a −inf target."""
    z, t, _, labels = inputs(n=6, k=1, v=9, scale=2.0)
    z, t, y = z.detach().view(6, 9).requires_grad_(), t.view(6, 9), labels.view(6)
    t[0, 2] = -math.inf  # a token the target never emits
    req = Request(eager=(name,), alpha_on=alpha_on)
    fused = {"pg_r": "pg", "pg_1": "pg", "pg_s": "pg"}.get(name, name)
    got = row_stats(z, t, y, Request(**{fused: True}, alpha_on=alpha_on), chunk_rows=4)[name]
    want = eager_row_stats(z, t, y, req.eager, alpha_on)[name]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if want.requires_grad:  # pg_s is detached
        w = torch.linspace(0.5, 1.5, 6, dtype=F64)  # an upstream gradient per row
        (g_got,) = torch.autograd.grad((w * got).sum(), z)
        (g_want,) = torch.autograd.grad((w * want).sum(), z)
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


def test_a_statistic_without_a_fused_kernel_comes_from_the_eager_table():
    """``bc`` (Bhattacharyya) has no kernel: ``row_stats`` computes it eagerly, beside the
    fused ones, and ``hellinger`` on it is ``1 − Σ sqrt(p̃ q)``."""
    assert "bc" not in STAT_NAMES and set(STAT_NAMES) < set(STATISTICS)
    z, t, mask = one([0.9, 0.1], [0.25, 0.25])  # p̃ = (½, ½): Z = ½ is renormalised away
    stats = row_stats(z.view(1, 2), t.view(1, 2), None, Request(kl=True, eager=("bc",)))
    bc = math.sqrt(0.45) + math.sqrt(0.05)
    assert stats["bc"].item() == pytest.approx(bc, abs=1e-12)
    assert stats["kl"].item() == pytest.approx(0.5 * math.log(0.5 / 0.9 * 0.5 / 0.1), abs=1e-12)
    assert run("hellinger", z, t, mask).item() == pytest.approx(1 - bc, abs=1e-12)
    # ∂H²/∂z = −½ (s − q Σ s), s = sqrt(p̃ q): the gradient of 1 − Σ exp(½(log p̃ + log q))
    s = torch.tensor([math.sqrt(0.45), math.sqrt(0.05)], dtype=F64)
    q = torch.tensor([0.9, 0.1], dtype=F64)
    want = -0.5 * (s - q * s.sum())
    torch.testing.assert_close(grad("hellinger", z, t, mask).view(2), want)
    z2, t2, m2 = one([0.5, 0.5], [0.5, 0.5])
    assert run("hellinger", z2, t2, m2).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("spec", EVERY)
def test_closed_form_gradients_match_autograd_of_the_definitions(spec, monkeypatch):
    z, t, mask, labels = inputs(n=5, k=3, v=9, scale=2.0)
    t[0, 1, 2] = -math.inf  # a token the target never emits
    mask[1, 0] = mask[3, 2] = False
    labels[2, 1] = -100
    got, g_got = run(spec, z, t, mask, labels), grad(spec, z, t, mask, labels)
    monkeypatch.setattr(core, "row_stats", eager_only)
    want, g_want = run(spec, z, t, mask, labels), grad(spec, z, t, mask, labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", EVERY)
def test_chunking_and_leading_dims_do_not_change_anything(spec):
    z, t, mask, labels = inputs(n=6, k=3, v=11)
    a, ga = run(spec, z, t, mask, labels, chunk_rows=1), grad(spec, z, t, mask, labels)
    b = run(spec, z, t, mask, labels, chunk_rows=1000)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    z4 = z.detach().view(2, 3, 3, 11).requires_grad_()
    c = run(spec, z4, t.view(2, 3, 3, 11), mask.view(2, 3, 3), labels.view(2, 3, 3), chunk_rows=4)
    assert a.item() == pytest.approx(c.item(), abs=1e-12)
    (g4,) = torch.autograd.grad(c, z4)
    torch.testing.assert_close(g4.view_as(ga), ga)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_inputs_are_computed_in_float32(dtype, base):
    z, t, mask, labels = inputs(n=4, k=2, v=16)
    want = run(base, z, t, mask, labels)
    zl = z.detach().to(dtype).requires_grad_()
    got = run(base, zl, t.to(dtype), mask, labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=0.05, abs=0.02)
    (g,) = torch.autograd.grad(got, zl)
    assert g.dtype == dtype and torch.isfinite(g.float()).all()


# --- data parallel: ᾱ is averaged across the ranks of one draft's group --------------

DP_ROWS = [slice(0, 1), slice(1, 4)]  # unequal shares: weighted by counts
DP_SPECS = ["lk_lambda(eta=3)", "lk_alpha(reduce=batch)", "lk_alpha(reduce=batch,eps=0)"]
DP_SPECS_LOCAL = [*DP_SPECS, "tvdpp"]  # every pooling loss, each with no group


def _dp_worker(rank: int, path: str, out: str) -> None:
    """Three gloo ranks: 0 and 1 replicate one draft (its group), 2 holds another alone."""
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=3)
    replicas = dist.new_group([0, 1])  # every rank creates every group (gloo's rule)
    z, t, mask, _ = inputs(n=4, k=2, v=6, seed=0)
    mask[2, 1] = False  # position 1 has no valid row on rank 0, two on rank 1
    result = {}
    if rank < 2:
        rows = DP_ROWS[rank]
        for spec in DP_SPECS:
            zr = z[rows].detach().requires_grad_()
            loss = run(spec, zr, t[rows], mask[rows], group=replicas)
            (g,) = torch.autograd.grad(loss, zr)
            result[spec] = (loss.detach(), g)
    for spec in DP_SPECS_LOCAL:  # no group: this rank's rows alone, no collective call
        rows = DP_ROWS[rank] if rank < 2 else slice(0, 4)
        zr = z[rows].detach().requires_grad_()
        loss = run(spec, zr, t[rows], mask[rows])
        (g,) = torch.autograd.grad(loss, zr)
        result[f"local {spec}"] = (loss.detach(), g)
    torch.save(result, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def dp_results():
    """Per rank ``{spec: (loss, ∂loss/∂this rank's logits)}`` from three gloo ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "loss")
        mp.spawn(_dp_worker, args=(os.path.join(tmp, "store"), out), nprocs=3)
        return [torch.load(f"{out}.{r}") for r in range(3)]


@pytest.mark.parametrize("spec", DP_SPECS_LOCAL)
def test_a_loss_without_a_group_pools_nothing_under_torch_distributed(dp_results, spec):
    """With a process group up but no group given, every rank's loss and gradient are
    those of its own rows in one process: drafts spread over ranks never pool (issue 18)."""
    z, t, mask, _ = dp_inputs()
    for r, rows in enumerate([*DP_ROWS, slice(0, 4)]):
        zr = z[rows].detach().requires_grad_()
        want = run(spec, zr, t[rows], mask[rows])
        (g_want,) = torch.autograd.grad(want, zr)
        loss, g = dp_results[r][f"local {spec}"]
        assert torch.equal(loss, want.detach()) and torch.equal(g, g_want), (r, spec)


def dp_inputs():
    z, t, mask, labels = inputs(n=4, k=2, v=6, seed=0)
    mask[2, 1] = False
    return z, t, mask, labels


def test_lambda_mean_alpha_is_all_reduced_across_ranks(dp_results):
    z, t, mask, _ = dp_inputs()
    alpha = (
        1
        - torch.stack(
            [
                torch.stack(
                    [
                        run("tv", z[n : n + 1, k : k + 1], t[n : n + 1, k : k + 1], mask[:1, :1])
                        for k in range(2)
                    ]
                )
                for n in range(4)
            ]
        ).detach()
    )
    # pooled over the valid rows of both ranks
    lam = torch.exp(-3 * (alpha * mask).sum(0) / mask.sum(0))
    for r, rows in enumerate(DP_ROWS):
        kl = run("lk_lambda(fixed=1)", z[rows], t[rows], mask[rows])  # Σ_k w_k KL_k
        tv = run("lk_lambda(fixed=0)", z[rows], t[rows], mask[rows])
        kl_k = torch.stack(
            [
                run("kl", z[rows, k : k + 1], t[rows, k : k + 1], mask[rows, k : k + 1])
                for k in range(2)
            ]
        )
        tv_k = torch.stack(
            [
                run("tv", z[rows, k : k + 1], t[rows, k : k + 1], mask[rows, k : k + 1])
                for k in range(2)
            ]
        )
        want = (torch.tensor([1.0, 0.8], dtype=F64) * (lam * kl_k + (1 - lam) * tv_k)).sum()
        assert kl.item() == pytest.approx((kl_k * torch.tensor([1, 0.8], dtype=F64)).sum().item())
        assert tv.item() == pytest.approx((tv_k * torch.tensor([1, 0.8], dtype=F64)).sum().item())
        assert dp_results[r]["lk_lambda(eta=3)"][0].item() == pytest.approx(want.item(), abs=1e-12)


@pytest.mark.parametrize("spec", DP_SPECS[1:])
def test_batch_mean_alpha_is_all_reduced_across_ranks(dp_results, spec):
    """Every rank's ``lk_alpha(reduce=batch)`` is ``−log ᾱ_k`` of the global batch, and the
    average of the ranks' gradients (what DDP applies) is that of the global batch."""
    z, t, mask, _ = dp_inputs()
    want = run(spec, z, t, mask)  # one process, all rows
    g_want = grad(spec, z, t, mask)
    for r, rows in enumerate(DP_ROWS):
        loss, g = dp_results[r][spec]
        assert loss.item() == pytest.approx(want.item(), abs=1e-12)
        torch.testing.assert_close(g / 2, g_want[rows])


def test_chunks_are_sized_by_device_cache_on_cpu_memory_budget_on_cuda(monkeypatch):
    """Issue 18: CPU chunks stay cache-sized (4 MiB fp32 buffers); on CUDA a chunk is a
    memory budget (256 MiB buffers), so a 128k vocabulary takes 512 rows a chunk, not 8."""
    from specbench.losses.rowstats import default_chunk_rows

    monkeypatch.delenv("SPECBENCH_LOSS_CHUNK_ROWS", raising=False)
    assert default_chunk_rows(131072, "cpu") == 8 and default_chunk_rows(32768) == 32
    assert default_chunk_rows(131072, "cuda:0") == 512
    assert default_chunk_rows(32768, torch.device("cuda")) == 2048
    monkeypatch.setenv("SPECBENCH_LOSS_CHUNK_ROWS", "100")
    assert default_chunk_rows(131072, "cuda") == default_chunk_rows(131072, "cpu") == 100
