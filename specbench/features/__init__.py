"""What a draft reads about its target, independent of how the target was run.

- :mod:`.cache`: the feature cache file (per position: stacked hidden states, sliced
  log-probabilities, argmax, loss mask) and padded batches of it;
- :mod:`.vocab`: the truncated draft vocabulary and its id maps.

Feature layout: features are stacked as ``[..., F, d]`` with ``F = 4``: hidden states of a
low, a middle and a high layer of the target, then the final (normed) hidden state that feeds
the LM head (:func:`specbench.targets.runner.feature_layer_indices` picks the layers). A
draft that reads others says so (``Draft.target_layers``, e.g. an imported EAGLE-3's
``aux_layers``); the caches of its own vocabulary hold them (the vocabulary file's
``feature_layers``).
"""

LOW, MID, HIGH, LAST = range(4)
