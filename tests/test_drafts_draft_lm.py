"""``draft_lm``, the independent draft LM: what its inits build, the tokenizer refusal, its
K = 1 training, tied weights, and the transformers export (the generic draft tests in
``test_drafts.py`` cover its training ↔ decoding consistency and losslessness)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import save_tiny_chat_target, tiny_llama
from transformers import AutoModelForCausalLM

from specbench.config import TrainConfig
from specbench.drafts import build_draft, load_draft
from specbench.formats import FormatError, export_draft, load_external
from specbench.losses import build as build_loss
from specbench.plan.shapes import target_config
from specbench.targets.info import target_info_from_checkpoint, target_info_from_model
from specbench.training.trainer import make_member

pytestmark = pytest.mark.usefixtures("one_thread")
V, D, LAYERS = 64, 32, 4


def ids(n: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (n, length), generator=torch.Generator().manual_seed(0))


def step1_logits(draft, x: torch.Tensor) -> torch.Tensor:
    """Step-1 logits at every anchor ``[B, L, V_draft]`` in eval mode (position i + 1)."""
    mask = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad():
        return draft.eval().forward_train(None, x, mask, 1).logits[:, :, 0]


@pytest.mark.parametrize("tied", [False, True])
def test_all_of_the_target_s_layers_are_the_target(tied):
    """``init: target_layers`` with every layer is the target itself: step 1 at anchor i is
    the target's next-token logits at position i + 1, over the full or a truncated vocab."""
    model = tiny_llama(V, D, LAYERS, tie_word_embeddings=tied)
    x = ids()
    want = model(x).logits.detach()
    full = build_draft("draft_lm", target_info_from_model(model), layers=LAYERS)
    got = step1_logits(full, x)
    torch.testing.assert_close(got[:, :-1], want[:, 1:], atol=1e-5, rtol=1e-5)
    d2t = torch.randperm(V, generator=torch.Generator().manual_seed(1))[:20]
    part = build_draft("draft_lm", target_info_from_model(model, d2t), layers=LAYERS)
    torch.testing.assert_close(
        step1_logits(part, x)[:, :-1], want[:, 1:, d2t], atol=1e-5, rtol=1e-5
    )
    # truncated: the head is the rows, untied; the input embedding is frozen (EAGLE-3's)
    assert part.lm.lm_head.weight.shape == (20, D)
    assert not part.lm.get_input_embeddings().weight.requires_grad


def test_a_checkpoint_folder_gives_the_draft_a_model_in_memory_gives(tmp_path):
    """transformers loads the first layers from the target's folder (its own name mapping);
    a model in memory hands them over from its state dict: the same draft either way."""
    model = tiny_llama(V, D, LAYERS)
    model.save_pretrained(tmp_path / "target")
    a = build_draft("draft_lm", target_info_from_model(model), layers=2)
    b = build_draft("draft_lm", target_info_from_checkpoint(str(tmp_path / "target")), layers=2)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.lm.config.num_hidden_layers == 2 and a.hparams["layers"] == 2


def test_tied_weights_are_saved_once_and_stay_tied(tmp_path):
    info = target_info_from_model(tiny_llama(V, D, LAYERS, tie_word_embeddings=True))
    draft = build_draft("draft_lm", info, layers=2)
    draft.save(tmp_path / "d")
    saved = load_file(str(tmp_path / "d" / "model.safetensors"))
    assert "lm.lm_head.weight" not in saved and "lm.model.embed_tokens.weight" in saved
    loaded = load_draft(tmp_path / "d", info)
    head, emb = loaded.lm.lm_head.weight, loaded.lm.get_input_embeddings().weight
    assert head.data_ptr() == emb.data_ptr()
    torch.testing.assert_close(step1_logits(loaded, ids()), step1_logits(draft, ids()))


def swapped_tokenizer(src, dst) -> None:
    """A copy of ``src``'s tokenizer with two tokens' ids exchanged."""
    (dst).mkdir(parents=True, exist_ok=True)
    for f in src.glob("tokenizer*"):
        (dst / f.name).write_bytes(f.read_bytes())
    tj = json.loads((dst / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (dst / "tokenizer.json").write_text(json.dumps(tj))


def test_a_draft_model_with_another_tokenizer_is_refused_in_one_line(tmp_path):
    target = save_tiny_chat_target(tmp_path / "target", layers=2)
    info = target_info_from_checkpoint(str(target))
    same = save_tiny_chat_target(tmp_path / "same", layers=1)
    draft = build_draft("draft_lm", info, init="pretrained", model=str(same))
    assert draft.lm.config.num_hidden_layers == 1
    other = tmp_path / "other"
    tiny_llama(info.vocab_size, D, 1).save_pretrained(other)
    swapped_tokenizer(target, other)
    with pytest.raises(ValueError, match="tokenizer is not the target's") as err:
        build_draft("draft_lm", info, init="pretrained", model=str(other))
    assert "\n" not in str(err.value) and "token ↔ id pairs differ" in str(err.value)
    smaller = tmp_path / "smaller"
    tiny_llama(info.vocab_size - 1, D, 1).save_pretrained(smaller)
    with pytest.raises(ValueError, match=f"vocab_size {info.vocab_size - 1}, the target's"):
        build_draft("draft_lm", info, init="pretrained", model=str(smaller))
    bare = tmp_path / "bare"  # no tokenizer files: the sizes agree, and it says what it skipped
    tiny_llama(info.vocab_size, D, 1).save_pretrained(bare)
    with pytest.warns(UserWarning, match="only the vocabulary sizes .* were compared"):
        build_draft("draft_lm", info, init="pretrained", model=str(bare))


def test_scratch_has_the_tvdpp_drafter_s_proportions():
    """TVD++'s drafter for Llama-2-7B (4096 wide, 32 layers, 32 heads, MLP 11008) had 4
    layers, width 1024, 8 heads, MLP 2816: on Llama-3.1-8B the same ratios give this."""
    from specbench.drafts.draft_lm import DEPTH_RATIO, scratch_config

    cfg = target_config("meta-llama/Llama-3.1-8B-Instruct")
    s = scratch_config(cfg, round(cfg.num_hidden_layers * DEPTH_RATIO), 0.25)
    got = (s.num_hidden_layers, s.hidden_size, s.num_attention_heads, s.num_key_value_heads)
    assert got == (4, 1024, 8, 2) and (s.intermediate_size, s.head_dim) == (3584, 128)
    assert s.vocab_size == cfg.vocab_size  # the target's tokenizer


def test_it_trains_one_step_whatever_train_k_says():
    info = target_info_from_model(tiny_llama(V, D, LAYERS))
    draft = build_draft("draft_lm", info, layers=1)
    train = TrainConfig(k=6, steps=1, batch_size=1, lr=1e-3, warmup_steps=0, grad_clip=1.0)
    member = make_member("m", draft, build_loss("kl"), 0, train, torch.device("cpu"), {})
    assert member.k == 1


def test_the_export_is_the_lm_transformers_and_our_reader_load(tmp_path):
    model = tiny_llama(V, D, LAYERS)
    model.save_pretrained(tmp_path / "target")
    info = target_info_from_checkpoint(str(tmp_path / "target"))
    draft = build_draft("draft_lm", info, layers=2)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.01 * torch.randn(p.shape))  # trained weights, not the target's
    out = export_draft(draft, info, tmp_path / "export", "transformers")
    x = ids()
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()(x).logits.detach()
    torch.testing.assert_close(step1_logits(draft, x)[:, :-1], theirs[:, 1:])
    back = load_external("transformers", out, info)
    torch.testing.assert_close(step1_logits(back, x), step1_logits(draft, x))
    part = target_info_from_checkpoint(str(tmp_path / "target"), torch.arange(20))
    with pytest.raises(FormatError, match="only a full-vocabulary"):
        export_draft(build_draft("draft_lm", part, layers=1), part, tmp_path / "x", "transformers")
