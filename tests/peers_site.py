"""The peers' own packages for the interop tests, installed without their dependencies.

speculators 0.9.0 and SpecForge 0.2.0 pin other torch / transformers versions than ours, so
they go into a separate target folder (``.venv/peers-site``, which ``make`` fills; the
fixture fills it where it is missing) that is appended to ``sys.path``: our torch and
transformers stay the ones imported. Two of speculators' dependencies come along (loguru,
hs-connectors: small, pure Python). One is stubbed: ``openai``, which speculators imports at
module level for its data-generation client only (it would pull httpx, anyio, jiter, ...);
any ``openai.*`` import gets an empty module whose attributes are empty classes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / ".venv" / "peers-site"
WHEELS = ROOT / ".venv" / "peers"  # make downloads the two wheels here
PACKAGES = ("speculators==0.9.0", "specforge==0.2.0", "loguru==0.7.3", "hs-connectors==0.9.0")
MODULES = ("speculators", "specforge", "loguru", "hs_connectors")
STUBBED = {"openai"}


def _stub_attribute(attr: str) -> type:
    """Any public name of a stubbed module is an empty class; dunders stay missing.

    (A stub that answered ``__file__`` with a class broke tools that scan ``sys.modules``,
    e.g. hypothesis, for the rest of the test session.)
    """
    if attr.startswith("__"):
        raise AttributeError(attr)
    return type(attr, (), {})


class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for ``STUBBED`` packages (and their submodules)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _stub_attribute
        return module

    def exec_module(self, module) -> None:
        pass


def ensure_peers() -> Path:
    """Install the peers into ``SITE`` if needed (pip, no dependencies) and make them importable."""
    if not all((SITE / m / "__init__.py").exists() for m in MODULES):
        links = ["--find-links", str(WHEELS)] if WHEELS.is_dir() else []
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(SITE)]
        subprocess.run([*cmd, *links, *PACKAGES], check=True)
    if str(SITE) not in sys.path:
        sys.path.append(str(SITE))
    if not any(isinstance(f, _Stub) for f in sys.meta_path):
        sys.meta_path.insert(0, _Stub())
    return SITE


def speculators_eagle3(
    layer, d2t, verifier: str, k: int, seed: int, out: Path, aux=(2, 4, 5), **flags
):
    """A random EAGLE-3 built and saved by speculators itself (its training entry point).

    ``layer``: the target's transformers config with one layer; ``d2t`` [Vd] the draft
    vocabulary (target ids, sorted); ``aux``: the target layers it reads. The norms and head
    are perturbed too, so every weight is random. ``flags``: e.g.
    ``norm_before_residual=True``. Returns the peer model.
    """
    import torch
    from speculators.models.eagle3 import Eagle3DraftModel

    vd = d2t.numel()
    t2d = torch.zeros(layer.vocab_size, dtype=torch.bool)
    t2d[d2t] = True
    torch.manual_seed(seed)
    peer = Eagle3DraftModel.from_training_args(
        layer,
        t2d=t2d,
        d2t=d2t - torch.arange(vd),
        verifier_name_or_path=verifier,
        target_layer_ids=list(aux),
        draft_vocab_size=vd,
        norm_before_residual=flags.get("norm_before_residual", False),
        ttt_steps=k,
        draft_attn_impl="sdpa",
    )
    with torch.no_grad():
        for name, p in peer.named_parameters():
            if "embed_tokens" not in name and "verifier" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    peer.save_pretrained(out)
    return peer.eval()
