"""Every (target, architecture) pair of ``configs/paper.yaml`` and ``configs/tvdpp.yaml``,
proven on the target's tiny twin.

The pairs, hparams, K and the baseline loss are read from the configs themselves (through
:func:`specbench.config.load_config`, as the pipeline reads it), so a pair added there is
tested here without editing this file. For each pair: build the draft from the twin's
:class:`~specbench.targets.info.TargetInfo`, one training step through the trainer's path
(feature cache → ``align`` → loss → backward → AdamW), one decoding round at T = 0 (equal to
greedy target decoding) and at T = 1, and a save/load round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from tiny import REAL, TWINS, build_twin, save_twin

from specbench.config import Config, load_config
from specbench.decoding.speculative import speculative_decode, target_decode
from specbench.drafts import build_draft, load_draft
from specbench.drafts.align import align, training_k, usable_k
from specbench.features.cache import FeatureCache, Sequence, save_cache
from specbench.features.vocab import target_to_draft_map
from specbench.losses import build as build_loss
from specbench.targets.featurize import compute_features
from specbench.targets.info import TargetInfo, target_info_from_model
from specbench.targets.runner import TargetRunner

pytestmark = pytest.mark.twins

CONFIGS = [
    Path(__file__).resolve().parents[1] / "configs" / f"{n}.yaml" for n in ("paper", "tvdpp")
]
# each target's config (target names are unique across the two)
CFG_OF: dict[str, Config] = {
    name: cfg
    for cfg in (load_config(yaml.safe_load(p.read_text())) for p in CONFIGS)
    for name in cfg.targets
}
PAIRS = [(name, arch) for name, cfg in CFG_OF.items() for arch in cfg.archs_for(name)]
# draft_lm's pretrained drafters (hub ids), each tested through its own twin
DRAFTERS = sorted({
    h["model"] for t, a in PAIRS if (h := CFG_OF[t].hparams_for(t, a)).get("model")
})  # fmt: skip
NEW_TOKENS = 12  # per decoding round


@dataclass
class Twin:
    model: torch.nn.Module
    info: TargetInfo
    runner: TargetRunner
    batch: dict[str, torch.Tensor]
    prompt: torch.Tensor  # [n] target ids


def make_twin(model_id: str, folder: Path) -> Twin:
    if model_id not in TWINS:
        pytest.fail(f"{model_id} has no tiny twin: add one to tests/tiny.py (TWINS)")
    model = build_twin(TWINS[model_id]())
    save_twin(model, folder)  # DeepSeek-V3: with a released-style MTP layer
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    # a truncated draft vocabulary, as the paper's (32k of 128k–201k tokens)
    d2t = torch.randperm(vocab, generator=g)[: 2 * vocab // 3].sort().values
    seqs = []
    for i, (m, n) in enumerate([(6, 14), (4, 9)]):
        ids = torch.randint(0, vocab, (m + n,), generator=g).tolist()
        seqs.append(Sequence(ids[:m], ids[m:], i))
    runner = TargetRunner(model)
    save_cache(compute_features(runner, seqs, d2t), folder / "cache.safetensors")
    batch = FeatureCache(folder / "cache.safetensors").batch([0, 1])
    info = target_info_from_model(model, d2t, name_or_path=str(folder))
    prompt = torch.tensor(seqs[0].prompt_ids)
    return Twin(model, info, runner, batch, prompt)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    made: dict[str, Twin] = {}

    def get(target: str) -> Twin:
        if target not in made:
            folder = tmp_path_factory.mktemp(target)
            made[target] = make_twin(CFG_OF[target].targets[target].model, folder)
        return made[target]

    return get


def test_every_paper_target_has_a_twin():
    assert PAIRS, "configs/paper.yaml lists no (target, architecture) pair"
    missing = {c.targets[t].model for t, c in CFG_OF.items()} | set(DRAFTERS)
    missing -= set(TWINS)
    assert not missing, f"no tiny twin for {sorted(missing)} (tests/tiny.py)"


def quirks(cfg: dict) -> dict:
    """What a draft can trip on, comparable between a real config and its twin."""
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    return {
        "model_type": cfg["model_type"],
        "gqa": heads // cfg["num_key_value_heads"],
        "head_dim ≠ hidden/heads": cfg["head_dim"] * heads != h,
        "hidden//heads is odd": (h // heads) % 2 == 1,
        "tied": cfg["tie_word_embeddings"],
        "rope_type": cfg["rope_type"],
        "moe": cfg["experts"] > cfg["top_k"] > 1,
        "layer_types": cfg["layer_types"],
        "sinks": cfg["sinks"],
        "mla": cfg["mla"],
    }


def twin_summary(twin: Twin) -> dict:
    c, embedding = twin.model.config, twin.model.get_input_embeddings().weight
    experts = next(
        (getattr(c, a) for a in ("num_local_experts", "n_routed_experts", "num_experts") if
         getattr(c, a, None)), 0,
    )  # fmt: skip
    return {
        "model_type": c.model_type,
        "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": twin.info.head_dim,
        "tie_word_embeddings": twin.model.lm_head.weight is embedding,
        "rope_type": c.rope_parameters["rope_type"],
        "experts": experts,
        "top_k": getattr(c, "num_experts_per_tok", 0) if experts else 0,
        "layer_types": set(c.layer_types) if getattr(c, "sliding_window", None) else None,
        "sinks": any(n.endswith("sinks") for n, _ in twin.model.named_parameters()),
        "mla": bool(getattr(c, "kv_lora_rank", None)),
    }


@pytest.mark.parametrize("target", list(CFG_OF))
def test_twin_keeps_the_real_quirks(target, twins):
    """GQA ratio, head width, tying, RoPE scaling, windows, sinks, MoE and MLA as the real one;
    the draft's head width follows the config (gpt-oss: 64, not 2880 // 64 = 45)."""
    twin = twins(target)
    assert quirks(twin_summary(twin)) == quirks(REAL[CFG_OF[target].targets[target].model])
    assert twin.info.head_dim == getattr(twin.model.config, "head_dim", None)


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_drafter_twin_keeps_the_real_quirks(drafter, tmp_path):
    model = build_twin(TWINS[drafter]())
    twin = Twin(model, target_info_from_model(model), TargetRunner(model), {}, torch.tensor([]))
    assert quirks(twin_summary(twin)) == quirks(REAL[drafter])


@pytest.fixture(scope="module")
def drafters(tmp_path_factory):
    """A pretrained drafter's hub id -> its twin, saved (the tokenizer of its target's twin)."""
    made: dict[str, str] = {}

    def get(model_id: str) -> str:
        if model_id not in made:
            folder = tmp_path_factory.mktemp("drafter")
            made[model_id] = str(save_twin(build_twin(TWINS[model_id](), seed=5), folder))
        return made[model_id]

    return get


@pytest.mark.parametrize("target, arch", PAIRS, ids=[f"{t}-{a}" for t, a in PAIRS])
def test_pair_trains_decodes_and_round_trips(target, arch, twins, drafters, tmp_path):
    twin = twins(target)
    cfg = CFG_OF[target]
    info, hparams = twin.info, dict(cfg.hparams_for(target, arch))
    if hparams.get("model"):  # draft_lm from a pretrained sibling: its twin
        hparams["model"] = drafters(hparams["model"])
    torch.manual_seed(0)
    draft = build_draft(arch, info, **hparams)

    # one training step, as the trainer takes it
    k = training_k(draft, cfg.train.k)
    t2d = target_to_draft_map(info.draft_to_target, info.vocab_size)
    st = align(draft.train(), twin.batch, k, t2d, torch.Generator().manual_seed(1))
    assert st.logits.shape[-2:] == (k, info.draft_vocab_size) and st.mask.any()
    loss = build_loss("kl")(
        draft_logits=st.logits, target_logits=st.target_logprobs, mask=st.mask, labels=st.labels
    )
    trainable = [p for p in draft.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.AdamW(
        trainable, lr=cfg.train.lr_for(draft.arch), betas=tuple(cfg.train.betas)
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trainable)
    opt.step()
    assert any(not torch.equal(p, b) for p, b in zip(trainable, before, strict=True))

    # one decoding round per temperature; T = 0 is exactly greedy target decoding
    draft.eval()
    k_eval = usable_k(draft, cfg.eval.k_for(arch))
    greedy = target_decode(twin.runner, twin.prompt, NEW_TOKENS, temperature=0)
    for temperature in (0, 1):
        res = speculative_decode(
            twin.runner,
            draft.start_session(),
            info.draft_to_target,
            twin.prompt,
            NEW_TOKENS,
            k_eval,
            temperature=temperature,
            generator=torch.Generator().manual_seed(2),
        )
        assert len(res.tokens) == NEW_TOKENS and res.num_rounds >= 1
        assert all(0 <= t < info.vocab_size for t in res.tokens)
        assert 1.0 <= res.tau <= k_eval + 1
        if temperature == 0:
            assert res.tokens == greedy.tokens

    # save / load gives the same draft
    draft.save(tmp_path / "draft")
    loaded = load_draft(tmp_path / "draft", info).eval()
    assert loaded.hparams == draft.hparams
    with torch.no_grad():
        a = align(draft, twin.batch, k, t2d).logits
        b = align(loaded, twin.batch, k, t2d).logits
    assert torch.equal(a, b)
