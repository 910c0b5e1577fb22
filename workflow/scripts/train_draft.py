import sys
import time
from pathlib import Path

sys.path.insert(0, "workflow/scripts")
import pandas as pd
import torch
from _common import setup

from specbench.drafts import build_draft
from specbench.features.cache import FeatureCache
from specbench.io import atomic_write_text
from specbench.jobs.gpus import claim_gpus
from specbench.losses import build as build_loss
from specbench.targets.info import target_info_from_checkpoint
from specbench.targets.launch import rank_device
from specbench.training.trainer import TrainSettings, train_draft


def main(cfg, wc) -> None:
    arch, loss, seed = wc.arch, snakemake.params.loss, int(wc.seed)
    cache = FeatureCache(snakemake.input.cache)
    # the draft needs the target's config, embedding and head: the model itself never runs here
    info = target_info_from_checkpoint(snakemake.params.model, cache.draft_to_target)
    torch.manual_seed(seed)
    draft = build_draft(arch, info, **cfg.arch_hparams.get(arch, {}))
    t = cfg.train
    settings = TrainSettings(
        steps=t.steps,
        batch_size=t.batch_size,
        lr=t.lr,
        betas=t.betas,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        grad_clip=t.grad_clip,
        k=min(t.k, draft.max_k or t.k),
        seed=seed,
        micro_batch_size=t.micro_batch_size,
    )
    device = rank_device()  # the job's GPU (resources: gpu=1), else the CPU
    print(f"{arch} ({draft.num_trainable_parameters():,} trainable params) loss={loss} seed={seed}")
    print(f"cache: {len(cache)} sequences, {cache.num_positions} positions, device {device}")
    t0 = time.time()
    records = train_draft(draft, build_loss(loss), cache, settings, device=device)
    atomic_write_text(snakemake.output.log_csv, pd.DataFrame(records).to_csv(index=False))
    draft.save(Path(snakemake.output.model).parent)  # model.safetensors last: marks it complete
    print(f"trained in {time.time() - t0:.0f}s")


cfg = setup(snakemake)
with claim_gpus(int(getattr(snakemake.resources, "gpu", 0) or 0)):  # before CUDA starts
    main(cfg, snakemake.wildcards)
