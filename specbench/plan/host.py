"""Host memory (RAM) of a GPU job, per job type, from stated parts.

One job's host memory (bytes), its N ranks on one node::

    host = N·(RUNTIME + vocab + data) + weights + gathered

    RUNTIME   per rank, the process itself: Python with torch, transformers and DeepSpeed
              imported, the tokenizer, the config. On a GPU node it also stands for the CUDA
              context's host side, the pinned staging buffers of the caching allocator and of
              NCCL, and the checkpoint file a rank maps while it copies its tensors to the GPU
              (hub checkpoints come in files of ≤ 5 GB): :data:`HOST_RUNTIME`, an ASSUMPTION
              (no GPU has run this code). The CPU tests put the process's measured baseline
              in its place (``tests/test_plan_host.py``).
    weights   the target's weights the host holds: all of them (P·w, pinned) where ZeRO-3
              offloads them to the CPU (``offload_param: cpu``; the ranks' partitions
              together), none where they live on the GPUs; all of them on a CPU (``on_gpu``
              False: the tests)
    vocab     ``train_group``, ``train_draft`` and ``evaluate_draft``, per rank: the
              target's embedding and LM head that ``TargetInfo`` reads from the checkpoint
              for the drafts (V·d·w each; one where they are tied)
    data      ``train_group``, per rank: the training token ids, int32, packed
              (``read_packed``), and the per-sequence tensors they are packed from: 2·4·T
              (T training tokens);
              ``evaluate_draft``, per rank: feature caches loaded whole, the first (kept for
              its vocabulary) and the current one: 2·cache;
              ``train_draft`` (``train.features: cache``): the training cache, read whole;
              ``responses``: prompts and responses as token lists, small beside RUNTIME
    gathered  ``features_*``, rank 0: the ranks' parts of the cache and their concatenation,
              2·cache
    cache     positions·(4·F·d + 4·V_d + 17): F feature layers and the draft-vocabulary
              log-probs in float32, the argmax and ids in int64, the loss mask (bool)

What is validated by measurement on a CPU (peak RSS of real jobs at 3 sizes, against the
model with the measured baseline in place of RUNTIME): the weights and the gathered cache.
"""

from __future__ import annotations

GiB = 2**30
HOST_RUNTIME = 8 * GiB  # per rank on a GPU node: an assumption (module doc)
FEATURES = 4  # feature layers a cache holds per position (low, mid, high, last)


def cache_bytes(positions: int, hidden: int, draft_vocab: int, features: int = FEATURES) -> int:
    """Bytes of a feature cache of ``positions`` positions (module doc, ``cache``)."""
    return positions * (4 * features * hidden + 4 * draft_vocab + 8 + 8 + 1)


def host_parts(
    job: str, *, params: float, ranks: int, offload: bool, vocab_mats: float = 0.0,
    tokens: int = 0, cache: float = 0.0, width: int = 2, runtime: float = HOST_RUNTIME,
    on_gpu: bool = True,
) -> dict[str, float]:  # fmt: skip
    """The parts of the module doc for one job of type ``job`` (a rule name: ``responses``,
    ``responses_shard``, ``features_eval``, ``features_train``, ``train_group``,
    ``evaluate_draft``, ``curve_eval``) and their sum, ``total``.

    ``params``: the target's parameters, ``width`` bytes each; ``vocab_mats``: bytes of its
    embedding and head; ``tokens``: training tokens (``train_group``); ``cache``: bytes of
    the feature cache the job reads (evaluation) or writes (features)."""
    parts = {"runtime": ranks * runtime, "weights": 0.0, "vocab": 0.0, "data": 0.0}
    if offload or not on_gpu:
        parts["weights"] = params * width
    if job in ("train_group", "train_draft", "evaluate_draft", "curve_eval"):
        parts["vocab"] = ranks * vocab_mats
    if job == "train_group":
        parts["data"] = ranks * 2 * 4 * tokens
    elif job == "train_draft":
        parts["data"] = ranks * cache
    elif job in ("evaluate_draft", "curve_eval"):
        parts["data"] = ranks * 2 * cache
    elif job in ("features_eval", "features_train"):
        parts["data"] = 2 * cache
    parts["total"] = sum(parts.values())
    return parts


def vocab_bytes(shape, width: int = 2) -> float:
    """The target's embedding and LM head (one where tied), ``width`` bytes an element."""
    mats = 1 if getattr(shape, "tie_word_embeddings", False) else 2
    return mats * width * shape.vocab_size * shape.hidden_size
