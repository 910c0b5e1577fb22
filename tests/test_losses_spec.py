"""Loss specs: parsing, canonical labels, and errors that name the valid choices."""

from __future__ import annotations

import pytest
import torch

from specbench.losses import LOSSES, available, build, canonical

# SPEC §3's objectives plus rkl and jsd, in canonical (registration) order
REQUIRED = ["kl", "tv", "lk_alpha", "lk_lambda", "tvdpp", "ce", "rkl", "jsd"]
REQUIRED += ["decay", "dpace", "focal", "chain"]


def inputs(n=3, k=2, v=7):
    z = torch.randn(n, k, v, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, k, v + 2, dtype=torch.float64).log_softmax(-1)[..., :v]
    return z, t, torch.ones(n, k, dtype=torch.bool), torch.randint(0, v, (n, k))


def run(spec, z, t, mask, labels=None):
    return build(spec)(draft_logits=z, target_logits=t, mask=mask, labels=labels)


@pytest.mark.parametrize(
    "spec, label",
    [
        ("kl", "kl"),
        ("lk_lambda(eta=10)", "lk_lambda(eta=10)"),
        ("lk_alpha(reduce=batch)", "lk_alpha(reduce=batch)"),
        ("ce+decay(gamma=7)+focal(alpha=0.3)+chain(alpha=40)", "ce+decay+focal+chain"),
        ("tv(gamma=1.0)", "tv(gamma=1)"),
        (" chain(alpha=20) + focal + ce (gamma = 0.9) ", "ce(gamma=0.9)+focal+chain(alpha=20)"),
        ("lk_lambda(alpha_on=p_tilde, eta=3, fixed=0.5)", "lk_lambda(alpha_on=p_tilde,fixed=0.5)"),
        ("tvdpp(scope=token)+dpace(mix=0.25)", "tvdpp(scope=token)+dpace(mix=0.25)"),
    ],
)
def test_specs_parse_and_canonicalise(spec, label):
    assert canonical(spec) == label
    assert build(spec).spec == label
    assert canonical(label) == label


def test_registry_lists_every_objective():
    assert [n for n in LOSSES if n in REQUIRED] == REQUIRED  # all there, in a fixed order
    assert available()["lk_lambda"]["eta"] == 3.0 and available()["kl"]["gamma"] == 0.8
    assert available()["rkl"] == {"gamma": 0.8} and available()["jsd"] == {"gamma": 0.8}
    assert canonical("kl+chain+focal+dpace+decay") == "kl+decay+dpace+focal+chain"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("kll", ["unknown loss 'kll'", "kl", "lk_lambda", "chain"]),
        ("lk_lambda(etaa=3)", ["unknown parameter 'etaa'", "eta", "lambda_scope", "fixed"]),
        ("kl(eta=3)", ["unknown parameter 'eta'", "valid: gamma"]),
        ("lk_alpha(reduce=mean)", ["'mean'", "token | batch"]),
        ("lk_lambda(eta=high)", ["'high'", "float"]),
        ("kl+tv", ["exactly one base loss"]),
        ("focal", ["exactly one base loss"]),
        ("kl(gamma=0.9)+decay", ["replaces it"]),
        ("kl+chain+chain", ["twice"]),
        ("kl(gamma=1, gamma=2)", ["given twice"]),
        ("kl(", ["cannot parse"]),
        ("kl gamma", ["cannot parse"]),
    ],
)
def test_bad_specs_name_the_valid_choices(spec, words):
    with pytest.raises(ValueError) as err:
        build(spec)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("spec", ["ce", "kl+focal", "tv+chain", "lk_lambda+dpace"])
def test_losses_that_need_labels_say_so(spec):
    z, t, mask, _ = inputs()
    with pytest.raises(ValueError, match="needs labels"):
        run(spec, z, t, mask)


def test_bad_shapes_are_errors():
    z, t, mask, labels = inputs()
    with pytest.raises(ValueError, match="mask"):
        run("kl", z, t, mask.float())
    with pytest.raises(ValueError, match="target_logits"):
        run("kl", z, t[..., :-1], mask)
    with pytest.raises(ValueError, match="labels"):
        run("ce", z, t, mask, labels + 100)
