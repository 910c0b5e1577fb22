import json
import sys

sys.path.insert(0, "workflow/scripts")
from _common import setup  # noqa: E402

from specbench.data.generate import read_jsonl  # noqa: E402
from specbench.features.vocab import build_draft_vocab  # noqa: E402
from specbench.io import atomic_write_text  # noqa: E402
from specbench.targets.loading import load_tokenizer  # noqa: E402

cfg = setup(snakemake)
responses = [r["response_ids"] for path in snakemake.input for r in read_jsonl(path)]
tok = load_tokenizer(snakemake.params.model)
d2t, coverage = build_draft_vocab(responses, cfg.data.draft_vocab_size, (tok.eos_token_id,))
payload = {
    "draft_to_target": d2t.tolist(),
    "size": int(d2t.numel()),
    "train_response_tokens": sum(map(len, responses)),
    "coverage": coverage,
}
atomic_write_text(snakemake.output[0], json.dumps(payload))
print(f"draft vocab {d2t.numel()} tokens covers {coverage:.2%} of training response tokens")
