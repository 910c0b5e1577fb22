"""Conformance with the peers' loss implementations: speculators 0.9.0 and SpecForge 0.2.0.

The wheels are downloaded with pip (``make`` puts them in ``.venv/peers``; otherwise into
pytest's cache) and their loss files are loaded by path, read-only, with stubs for the
heavy packages they import at top level (triton, their own packages). Each test computes a
registered specbench loss and the peer's loss on the same random float64 inputs and
compares values and gradients w.r.t. the draft logits, after converting the peer's
normalisation to specbench's (per-position means over the valid rows, SPEC §3). Every
conversion is named where it is made; README "Losses" lists them.

float64: the peers cast to float32 with ``dtype=torch.float32`` or ``.to(torch.float32)``;
their modules see a ``torch`` whose ``float32`` is ``float64``, so those casts keep float64
inputs exact. Casts by tensor method (``.float()``: SpecForge's KL reference and both peers'
D-PACE weights) stay float32, and those comparisons use a float32 tolerance.

Run ``pytest -m peers -s tests/test_peers.py`` to see the measured differences.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
import zipfile
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from specbench.losses import build

pytestmark = pytest.mark.peers

F64 = torch.float64
PEERS = {"speculators": "0.9.0", "specforge": "0.2.0"}
FILES = [
    "speculators/losses/eager.py",
    "speculators/losses/utils.py",
    "specforge/core/lk_loss.py",
    "specforge/core/loss.py",
    "specforge/algorithms/common/dflash_family_model.py",
]
N, K, V, EXTRA = 6, 4, 11, 3
TIGHT = {"rtol": 1e-9, "atol": 1e-12}  # float64 all the way
FP32 = {"rtol": 2e-5, "atol": 1e-6}  # a float32 step inside the peer


# --- getting and loading the peers ---------------------------------------------------


def _wheels_in(folder: Path) -> dict[str, Path] | None:
    found = {n: sorted(folder.glob(f"{n}-{v}-*.whl")) for n, v in PEERS.items()}
    return {n: w[0] for n, w in found.items()} if all(found.values()) else None


def _download(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pins = [f"{n}=={v}" for n, v in PEERS.items()]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder), *pins]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"could not download the peers' wheels ({' '.join(pins)}): {err}")
    wheels = _wheels_in(folder)
    if done.returncode != 0 or wheels is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        pytest.skip(f"could not download the peers' wheels ({' '.join(pins)}): {tail}")
    return wheels


@pytest.fixture(scope="session")
def peer_files(request, tmp_path_factory) -> Path:
    """The peers' loss files, unpacked from their wheels into a temporary folder."""
    wheels = _wheels_in(Path(sys.prefix) / "peers")  # the Makefile's `.venv/peers`
    if wheels is None:
        cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
        folder = cache.mkdir("peers") if cache else tmp_path_factory.mktemp("wheels")
        wheels = _wheels_in(folder) or _download(folder)
    root = tmp_path_factory.mktemp("peers")
    for wheel in wheels.values():
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name in FILES:
                    zf.extract(name, root)
    missing = [f for f in FILES if not (root / f).is_file()]
    assert not missing, f"the peers' wheels no longer hold {missing}"
    return root


class _Float64Torch(types.ModuleType):
    """``torch`` as a peer module sees it: ``torch.float32`` is ``torch.float64``."""

    def __getattr__(self, name: str):
        return torch.float64 if name == "float32" else getattr(torch, name)


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so that submodules can be stubbed too
    module.__dict__.update(attrs)
    return module


def _load(path: Path, stubs: dict[str, types.ModuleType]) -> types.ModuleType:
    """Execute one peer file as a module of its own, with ``stubs`` in ``sys.modules``
    during its imports only (real modules of those names are put back afterwards)."""
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location(f"_peer_{path.stem}_{id(path)}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    module.torch = _Float64Torch("torch")
    return module


@pytest.fixture(scope="session")
def speculators(peer_files) -> types.SimpleNamespace:
    """speculators' ``losses/eager.py`` (the reference losses) and ``losses/utils.py``
    (reductions, position decays, D-PACE)."""
    eager = _load(peer_files / "speculators/losses/eager.py", {})
    pkg = _stub("speculators.losses", eager=eager)
    stubs = {"speculators": _stub("speculators", losses=pkg), "speculators.losses": pkg}
    utils = _load(peer_files / "speculators/losses/utils.py", stubs)
    return types.SimpleNamespace(eager=eager, utils=utils)


def _triton_stubs() -> dict[str, types.ModuleType]:
    """triton, for defining (never running) SpecForge's kernels, if it is not installed."""
    if importlib.util.find_spec("triton") is not None:
        return {}
    language = _stub("triton.language", constexpr=object)
    jit = lambda fn=None, **_: fn if fn is not None else (lambda f: f)  # noqa: E731
    return {"triton": _stub("triton", jit=jit, language=language), "triton.language": language}


@pytest.fixture(scope="session")
def specforge(peer_files) -> types.SimpleNamespace:
    """SpecForge's ``core/lk_loss.py``, ``core/loss.py`` (the KL) and the DFlash-family model
    (its CE, decay and D-PACE objective)."""
    lk = _load(peer_files / "specforge/core/lk_loss.py", {})
    # `_compute_loss` is the torch.compile'd CPU reference of their Triton LogSoftmaxLoss; it
    # is loaded uncompiled (compiling needs a C++ toolchain, and dynamo probes triton)
    compile_ = torch.compile
    torch.compile = lambda model=None, **_: model if model is not None else (lambda fn: fn)
    try:
        loss = _load(peer_files / "specforge/core/loss.py", _triton_stubs())
    finally:
        torch.compile = compile_
    dflash_stubs = {
        "specforge": _stub("specforge"),
        "specforge.core": _stub("specforge.core"),
        "specforge.core.chunking": _stub("specforge.core.chunking", checkpointed_chunk_reduce=None),
        "specforge.modeling": _stub("specforge.modeling"),
        "specforge.modeling.draft": _stub("specforge.modeling.draft"),
        "specforge.modeling.draft.dflash": _stub(
            "specforge.modeling.draft.dflash", DFlashDraftModel=nn.Module
        ),
    }
    dflash = _load(peer_files / "specforge/algorithms/common/dflash_family_model.py", dflash_stubs)
    return types.SimpleNamespace(lk=lk, kl=loss._compute_loss, dflash=dflash)


# --- shared inputs and the comparison -------------------------------------------------


def inputs(seed: int = 0):
    """Draft logits ``[N, K, V]``, target log-probs over ``V + EXTRA`` tokens sliced to the
    draft vocabulary ``V``, their argmax as labels, and two masks: ``step`` (irregular
    valid counts per position) and ``block`` (one hole per position, at the head, inside and
    at the tail of a block, plus a padded block: every position keeps 4 valid rows)."""
    g = torch.Generator().manual_seed(seed)
    z = (1.5 * torch.randn(N, K, V, generator=g, dtype=F64)).requires_grad_()
    t = (1.5 * torch.randn(N, K, V + EXTRA, generator=g, dtype=F64)).log_softmax(-1)[..., :V]
    labels = t.argmax(-1)
    block = torch.ones(N, K, dtype=torch.bool)
    block[0, 1] = block[1, 3] = block[2, 0] = block[3, 2] = False
    block[5] = False
    step = block.clone()
    step[4, 0] = False
    return z, t, labels, step, block


def specbench(spec: str, z, t, mask, labels):
    loss = build(spec)(draft_logits=z, target_logits=t, mask=mask, labels=labels)
    (g,) = torch.autograd.grad(loss, z)
    return loss.detach(), g


def compare(peer: str, name: str, ours, theirs, raw, tol) -> None:
    """Assert and print: ``ours``/``theirs`` are (value, gradient) in specbench's units,
    ``raw`` the peer's value as it reports it."""
    dv = (ours[0] - theirs[0]).abs().item()
    dg = (ours[1] - theirs[1]).abs().max().item()
    print(
        f"\n{peer:11s} {name:10s} value {ours[0].item():.6f}  |Δvalue| {dv:.1e}  "
        f"max|Δgrad| {dg:.1e}  (peer's own value {raw:.6f})"
    )
    torch.testing.assert_close(theirs[0], ours[0], **tol)
    torch.testing.assert_close(theirs[1], ours[1], **tol)


# --- speculators ----------------------------------------------------------------------


def speculators_steps(sp, loss_fn, z, t, mask, gamma: float = 0.8):
    """speculators' EAGLE-3 objective: ``Σ_k loss_function(step k)`` with the step decay
    ``γ^k`` (``models/eagle3/metrics.py``). Each step is ``Σ loss·mask / (Σ mask + 1e-5)``;
    rescaled here to specbench's ``/ Σ mask``. Targets are logits over the draft vocabulary,
    so the peer's ``softmax(targets)`` is p̃."""
    total, raw = 0.0, 0.0
    for k in range(K):
        step = sp.utils.loss_function(
            z[None, :, k],
            t[None, :, k],
            mask[None, :, k],
            torch.full((1, N), k),
            loss_fn=loss_fn,
            decay_fn=partial(sp.utils.exp_loss_decay, gamma=gamma),
        )
        count = mask[:, k].sum().to(F64)
        raw = raw + step.detach()
        total = total + step * (count + sp.utils._LOSS_REDUCTION_EPS) / count
    (g,) = torch.autograd.grad(total, z)
    return (total.detach(), g), raw.item()


SPECULATORS_STEPS = {  # peer eager loss -> registered specbench spec
    "kl_div_loss": "kl",
    "reverse_kl_div_loss": "rkl",
    "js_div_loss": "jsd",
    "ce_loss": "ce",
    "tv_loss": "tv(alpha_on=p_tilde)",
    # NLA is −log(max(α, 1e-5)); equal to eps=0 while every α > 1e-5 (checked below)
    "neg_log_acceptance_loss": "lk_alpha(eps=0,alpha_on=p_tilde)",
    "lk_hybrid_loss": "lk_lambda(lambda_scope=token,alpha_on=p_tilde)",  # η = 3 both
}


@pytest.mark.parametrize("peer_fn, spec", SPECULATORS_STEPS.items())
def test_speculators_per_position_losses(speculators, peer_fn, spec):
    z, t, labels, step, _ = inputs()
    if "lk_alpha" in spec:
        alpha = torch.minimum(z.softmax(-1), t.softmax(-1)).sum(-1)
        assert alpha.min() > 1e-5  # the peer's clamp is inactive
    theirs, raw = speculators_steps(speculators, getattr(speculators.eager, peer_fn), z, t, step)
    ours = specbench(spec, z, t, step, labels)
    compare("speculators", spec.split("(")[0], ours, theirs, raw, TIGHT)


def _blocks(z, t, mask):
    """DFlash layout ``[1, N·(K+1), V]``: each block's slot 0 is the anchor (no prediction,
    masked), slots 1..K are specbench's draft positions."""
    pad = torch.zeros(N, 1, V, dtype=F64)
    zb = torch.cat([pad, z], 1).reshape(1, N * (K + 1), V)
    tb = torch.cat([pad, t], 1).reshape(1, N * (K + 1), V)
    mb = torch.cat([torch.zeros(N, 1, dtype=torch.bool), mask], 1).reshape(1, -1)
    pos = torch.arange(K + 1).repeat(N)[None]
    return zb, tb, mb, pos


@pytest.mark.parametrize(
    "weighting, spec",
    [("decay", "ce+decay(gamma=7)"), ("dpace", "ce(gamma=1)+dpace(mix=0.3)")],
)
def test_speculators_block_weightings(speculators, weighting, spec):
    """DFlash's ``dflash_loss_decay`` (slot k ≥ 1 weighs ``exp(−(k−1)/γ)``) and
    ``dpace_loss_decay`` (``dpace_alpha = 1 − mix``) through ``loss_function``: one masked
    mean over every slot, ``/ (Σ mask + 1e-5)``; specbench means each position over its own
    valid rows, so gradients are compared per position times ``(Σ mask + 1e-5) / N_k``."""
    z, t, labels, _, mask = inputs()
    zb, tb, mb, pos = _blocks(z, t, mask)
    u = speculators.utils
    if weighting == "decay":
        decay = partial(u.dflash_loss_decay, gamma=7.0)
    else:
        decay = partial(u.dpace_loss_decay, loss_mask=mb, block_size=K + 1, dpace_alpha=0.7)
    loss = u.loss_function(zb, tb, mb, pos, loss_fn=speculators.eager.ce_loss, decay_fn=decay)
    (g,) = torch.autograd.grad(loss, z)
    denominator = mask.sum().to(F64) + u._LOSS_REDUCTION_EPS
    count = mask.sum(0).to(F64)  # equal for every position: the value converts too
    theirs = (loss.detach() * denominator / count[0], g * (denominator / count)[:, None])
    tol = TIGHT if weighting == "decay" else FP32  # their D-PACE q is .float()
    ours = specbench(spec, z, t, mask, labels)
    compare("speculators", weighting, ours, theirs, loss.item(), tol)


# --- SpecForge ------------------------------------------------------------------------


def _entropy(t, mask_k):
    p_tilde = t.softmax(-1)
    return -(p_tilde * p_tilde.log()).sum(-1) * mask_k


def specforge_steps(sf, kind: str, z, t, mask, eta: float = 3.0):
    """SpecForge's EAGLE-3 objective per TTT step ``k`` (``algorithms/eagle3/model.py``),
    summed with ``0.8^k`` (``training/strategies/base.py``).

    KL: ``LogSoftmaxLoss`` = ``−Σ mask·p̃ log q`` averaged over *all* ``N`` rows (a
    cross-entropy: it includes ``H(p̃)``); converted to specbench's ``KL_k`` by ``× N/N_k``
    minus the mean entropy. α terms (``lk_loss.py``) use the original ``p`` and masked means
    over valid rows (as specbench). L^λ: ``λ·KL_peer + (1 − λ)(1 − ᾱ)`` with
    ``λ = kl_scale·exp(−kl_decay·ᾱ)``, converted likewise.
    """
    total, raw = 0.0, 0.0
    for k in range(K):
        zk, tk, mk = z[None, :, k], t[None, :, k], mask[None, :, k]
        count = mk.sum()
        kl = sf.kl(zk, tk.softmax(-1), mk[..., None].to(F64))
        entropy = _entropy(tk, mk).sum() / count
        kl_ours = kl * N / count - entropy
        acc, log_acc = sf.lk.compute_acceptance_rate(
            logits=zk, target_probs=tk.exp(), position_mask=mk[..., None]
        )
        if kind == "kl":
            step, ours = kl, kl_ours
        else:
            step = sf.lk.compute_lk_loss(
                kl_loss=kl,
                acceptance_rate=acc,
                log_acceptance_rate=log_acc,
                lk_loss_type=kind,
                kl_scale=1.0,
                kl_decay=eta,
            )
            lam = torch.exp(-eta * acc.detach())
            ours = step + lam * (kl_ours - kl) if kind == "lambda" else step
        raw = raw + 0.8**k * step.detach()
        total = total + 0.8**k * ours
    (g,) = torch.autograd.grad(total, z)
    return (total.detach().to(F64), g), raw.item()


@pytest.mark.parametrize(
    "kind, spec, tol",
    [("kl", "kl", FP32), ("alpha", "lk_alpha(eps=0)", TIGHT), ("lambda", "lk_lambda", FP32)],
)
def test_specforge_per_position_losses(specforge, kind, spec, tol):
    z, t, labels, step, _ = inputs()
    theirs, raw = specforge_steps(specforge, kind, z, t, step)
    compare("specforge", spec.split("(")[0], specbench(spec, z, t, step, labels), theirs, raw, tol)


def _dflash_model(sf, loss_type: str, gamma: float | None, dpace_alpha: float = 0.5):
    """``OnlineDFlashModel`` holding only what its objective reads; its LM head is the
    identity, so the "hidden states" fed to it are the draft logits."""
    model = sf.dflash.OnlineDFlashModel.__new__(sf.dflash.OnlineDFlashModel)
    nn.Module.__init__(model)
    model.lm_head = nn.Identity()
    model.block_size, model.loss_type = K + 1, loss_type
    model.loss_decay_gamma, model.dpace_alpha = gamma, dpace_alpha
    return model


@pytest.mark.parametrize(
    "loss_type, gamma, spec, tol",
    [
        ("dflash", None, "ce(gamma=1)", TIGHT),
        ("dflash", 7.0, "ce+decay(gamma=7)", FP32),  # their decay weights are .float()
        ("dpace", None, "ce(gamma=1)+dpace(mix=0.3)", TIGHT),
    ],
)
def test_specforge_dflash_objectives(specforge, loss_type, gamma, spec, tol):
    """``_dflash_objective_chunk_terms`` (``algorithms/common/dflash_family_model.py``):
    ``Σ CE·mask·w / Σ mask·w`` (DFlash, decay weights ``w`` in the denominator too) or
    ``Σ CE·mask·W / B`` (D-PACE, ``B`` = sequences in the batch, here 1); converted per
    position to specbench's ``/ N_k``."""
    z, t, labels, _, mask = inputs()
    zb, _, mb, _ = _blocks(z, t, mask)
    ids = torch.cat([torch.zeros(N, 1, dtype=torch.long), labels], 1)[None]
    model = _dflash_model(specforge, loss_type, gamma, dpace_alpha=0.7)
    num, den, *_ = model._dflash_objective_chunk_terms(
        zb.view(1, N, K + 1, V), ids, mb.view(1, N, K + 1).to(F64)
    )
    loss = num / den if loss_type == "dflash" else num / 1
    (g,) = torch.autograd.grad(loss, z)
    denominator = den.detach() if loss_type == "dflash" else torch.tensor(1.0, dtype=F64)
    count = mask.sum(0).to(F64)
    theirs = (loss.detach() * denominator / count[0], g * (denominator / count)[:, None])
    name = loss_type if gamma is None else "decay"
    compare("specforge", name, specbench(spec, z, t, mask, labels), theirs, loss.item(), tol)
