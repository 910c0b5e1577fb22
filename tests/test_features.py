"""Target feature cache and trainer alignment on a tiny random Llama target."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_llama

from specbench.drafts.align import align
from specbench.drafts.base import Draft, TrainOutput
from specbench.features.cache import FeatureCache, PackedSequences, Sequence, save_cache
from specbench.features.vocab import build_draft_vocab, target_to_draft_map
from specbench.targets.featurize import compute_features
from specbench.targets.info import target_info_from_model
from specbench.targets.runner import TargetRunner


def _sequences():
    g = torch.Generator().manual_seed(0)
    seqs = []
    for i, (m, n, extra) in enumerate([(5, 7, 0), (3, 4, 2), (6, 2, 0)]):
        ids = torch.randint(0, 64, (m + n + extra,), generator=g).tolist()
        seqs.append(Sequence(ids[:m], ids[m : m + n], i, ids[m + n :]))
    return seqs


def test_draft_vocab_keeps_most_frequent_and_reports_coverage():
    d2t, cov = build_draft_vocab([[1, 1, 1, 2, 2, 3], [1, 4]], size=2, always=(9,))
    assert d2t.tolist() == [1, 9]  # EOS-like `always` first, then the most frequent
    assert abs(cov - 4 / 8) < 1e-9


def test_cache_matches_unpadded_full_vocab_forward(tmp_path):
    model = tiny_llama()
    runner = TargetRunner(model)
    seqs = _sequences()
    d2t = torch.tensor([0, 3, 5, 7, 11, 20, 63])
    tensors = compute_features(runner, seqs, d2t, batch_size=2, vocab_chunk_positions=3)
    save_cache(tensors, tmp_path / "c.safetensors")
    cache = FeatureCache(tmp_path / "c.safetensors")
    assert len(cache) == 3
    for i, s in enumerate(seqs):
        ref = runner.forward(torch.tensor([s.ids]), use_cache=False)
        got = cache.sequence(i)
        full = torch.log_softmax(ref.logits[0], -1)
        torch.testing.assert_close(got["logprobs"], full[:, d2t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["features"], ref.features[0], atol=1e-5, rtol=1e-5)
        assert got["target_argmax"].tolist() == full.argmax(-1).tolist()
        # p restricted to the draft vocab sums to < 1; p̃ renormalises it
        assert (got["logprobs"].exp().sum(-1) < 1).all()
        m, n = len(s.prompt_ids), len(s.response_ids)
        expect = [m - 1 <= j < m + n - 1 for j in range(len(s.ids))]
        assert got["loss_mask"].tolist() == expect  # look-ahead tokens are never trained on
    b = cache.batch([0, 1])
    assert b["attention_mask"].sum().item() == len(seqs[0].ids) + len(seqs[1].ids)


class _Probe(Draft):
    """A draft whose logits are zeros: lets the test see what align() gathers."""

    def forward_train(self, features, input_ids, attention_mask, k, generator=None, loss_mask=None):
        b, length = input_ids.shape
        logits = torch.zeros(b, length, k, self.info.draft_vocab_size)
        return TrainOutput(logits, torch.arange(length).expand(b, length))


def test_align_pairs_step_k_with_p_at_anchor_plus_k(tmp_path):
    model = tiny_llama()
    seqs = _sequences()
    d2t = torch.arange(0, 64, 2)
    save_cache(compute_features(TargetRunner(model), seqs, d2t), tmp_path / "c.safetensors")
    cache = FeatureCache(tmp_path / "c.safetensors")
    info = target_info_from_model(model, d2t)
    batch = cache.batch([0, 1, 2])
    k = 3
    st = align(_Probe(info), batch, k, target_to_draft_map(d2t, 64))
    width = batch["input_ids"].shape[1]
    target_logprobs = st.target_logprobs.materialize()  # [N, K, V]: rows by index, gathered
    for b, s in enumerate(seqs):
        ids = s.ids
        m, n = len(s.prompt_ids), len(s.response_ids)
        for a in range(width):
            for j in range(1, k + 1):
                row, pos = b * width + a, a + j
                valid = pos + 1 < len(ids) and m - 1 <= pos < m + n - 1
                assert bool(st.mask[row, j - 1]) == valid, (b, a, j)
                if valid:
                    want = cache.sequence(b)["logprobs"][pos]
                    torch.testing.assert_close(target_logprobs[row, j - 1], want)
                    tok = ids[pos + 1]
                    assert st.labels[row, j - 1] == (tok // 2 if tok % 2 == 0 else -100)


def test_target_info_from_checkpoint_equals_from_model(tmp_path):
    from specbench.targets.info import target_info_from_checkpoint

    model = tiny_llama()
    model.save_pretrained(tmp_path / "t")
    d2t = torch.tensor([1, 4, 9])
    a = target_info_from_model(model, d2t)
    b = target_info_from_checkpoint(str(tmp_path / "t"), d2t)
    torch.testing.assert_close(a.embed_tokens, b.embed_tokens)
    torch.testing.assert_close(a.lm_head, b.lm_head)
    assert a.target_flops_per_token == b.target_flops_per_token
    for field in ("hidden_size", "vocab_size", "num_attention_heads", "intermediate_size"):
        assert getattr(a, field) == getattr(b, field)
    with pytest.raises(FileNotFoundError, match="download"):
        target_info_from_checkpoint(str(tmp_path / "missing"))


def test_released_mtp_weights_are_read_from_the_checkpoint(tmp_path):
    """transformers drops DeepSeek-V3's MTP layer on load; the draft info reads it from disk."""
    from safetensors.torch import save_file
    from tiny import tiny_deepseek_v3_config
    from transformers import DeepseekV3ForCausalLM

    from specbench.targets.info import target_info_from_checkpoint

    cfg = tiny_deepseek_v3_config()
    DeepseekV3ForCausalLM(cfg).save_pretrained(tmp_path / "ds")
    n = cfg.num_hidden_layers
    mtp = {
        f"model.layers.{n}.eh_proj.weight": torch.randn(cfg.hidden_size, 2 * cfg.hidden_size),
        f"model.layers.{n}.enorm.weight": torch.ones(cfg.hidden_size),
    }
    save_file(mtp, str(tmp_path / "ds" / "mtp.safetensors"))
    info = target_info_from_checkpoint(str(tmp_path / "ds"))
    assert set(info.mtp_state_dict) == set(mtp)
    torch.testing.assert_close(
        info.mtp_state_dict[f"model.layers.{n}.eh_proj.weight"],
        mtp[f"model.layers.{n}.eh_proj.weight"],
    )
    assert info.extra["hf_config"].model_type == "deepseek_v3"


def test_full_vocabulary_cache_is_the_whole_normalised_distribution(tmp_path):
    """``full`` vocabulary: the identity map; cached log p sums to one at every position."""
    from specbench.features.vocab import full_vocab_payload

    model = tiny_llama()
    payload = full_vocab_payload(model.config.vocab_size)
    d2t = torch.tensor(payload["draft_to_target"])
    assert payload["size"] == 64 and torch.equal(d2t, torch.arange(64)) and payload["coverage"] == 1
    tensors = compute_features(TargetRunner(model), _sequences(), d2t, batch_size=2)
    total = tensors["logprobs"].logsumexp(dim=-1)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-5, rtol=0)
    assert (target_to_draft_map(d2t, 64) >= 0).all()  # nothing is out of vocabulary


def test_packed_sequences_give_back_what_was_appended():
    seqs = [Sequence([1, 2], [3, 4, 5], 0), Sequence([6], [7], 1, [8, 9]), Sequence([10], [], 2)]
    packed = PackedSequences()
    for s in seqs:
        packed.append(s)
    packed.freeze()
    assert len(packed) == 3 and [packed[i] for i in range(3)] == seqs
    assert packed.ids.dtype == torch.int32 and packed.response_lengths().tolist() == [3, 1, 0]
