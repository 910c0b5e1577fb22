import json
import sys

sys.path.insert(0, "workflow/scripts")
from _common import setup  # noqa: E402

from specbench.data.hub import drop_overlap, split_prompts  # noqa: E402
from specbench.io import atomic_write_text  # noqa: E402

cfg = setup(snakemake)
domain = snakemake.wildcards.domain
n_train, n_eval = cfg.data.train_prompts_per_domain, cfg.data.eval_prompts_per_domain
# a data.sources entry wins over the offline default (specbench.data.sources)
ev, eval_source = split_prompts(domain, "eval", n_eval, cfg.data.source(domain, "eval"))
tr, train_source = split_prompts(domain, "train", n_train, cfg.data.source(domain, "train"))
print(f"{domain}: train prompts from {train_source}, eval prompts from {eval_source}")
tr, dropped = drop_overlap(tr, ev)
print(f"{domain}: dropped {dropped} training prompts that are also evaluation prompts")
payload = {
    "domain": domain,
    "eval_source": eval_source,
    "train_source": train_source,
    "train_dropped_as_eval": dropped,
    "train": tr,
    "eval": ev,
}
assert not set(payload["train"]) & set(payload["eval"]), "train/eval prompts overlap"
atomic_write_text(snakemake.output[0], json.dumps(payload, indent=1))
print(f"{domain}: {len(payload['train'])} train, {len(payload['eval'])} eval prompts")
