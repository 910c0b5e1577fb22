# Training. train.features: cache -> one train_draft job per (target, arch, loss, seed), on the
# feature cache. train.features: online -> one train_group job per group of (loss, seed) of a
# (target, arch) (CFG.train_groups), with the target running inside it; group_draft then links
# each draft to the same path train_draft would write, so evaluation reads either alike.

DRAFT_DIR = f"{R}/drafts/{{target}}/{{arch}}/{{loss}}/seed{{seed}}"


if CFG.train.features == "cache":

    rule train_draft:
        """Train one draft architecture with one loss and seed on the cached features."""
        input:
            cache=lambda wc: f"{R}/features/{wc.target}/{CFG.vocab_for(wc.arch)}/train.safetensors",
            target=target_source,
        output:
            model=f"{DRAFT_DIR}/model.safetensors",
            log_csv=f"{DRAFT_DIR}/train_log.csv",
            status=f"{DRAFT_DIR}/train_status.json",
        log:
            f"{R}/logs/train/{{target}}/{{arch}}/{{loss}}/seed{{seed}}.log",
        params:
            model=lambda wc: target_model(wc.target),
            loss=lambda wc: LOSS_BY_SLUG[wc.loss],
            config_digest=config_digest("data", "train", "arch_vocab"),
            hparams=lambda wc: CFG.hparams_for(wc.target, wc.arch),  # the target's own too
        threads: CFG.threads
        resources:
            gpu=lambda wc: min(1, CFG.targets[wc.target].gpus),
        conda:
            ENV
        script:
            SCRIPT

else:

    rule train_group:
        """Train every (loss, seed) of one group on the running target: one forward per batch."""
        input:
            responses=train_responses,
            vocab=lambda wc: f"{R}/data/vocab/{wc.target}/{CFG.vocab_for(wc.arch)}.json",
            target=target_source,
        output:
            group=directory(f"{R}/groups/{{target}}/{{arch}}/g{{group}}"),
        log:
            f"{R}/logs/train/{{target}}/{{arch}}/g{{group}}.log",
        wildcard_constraints:
            group=r"\d+",
        params:
            model=lambda wc: target_model(wc.target),
            runs=group_runs,
            # outside the output folder, which Snakemake clears before rerunning the job
            checkpoint=lambda wc: f"{R}/checkpoints/{wc.target}/{wc.arch}/g{wc.group}",
            # the group's own (loss, seed) runs and hparams are params too: editing another
            # architecture's losses or hparams reruns none of this one's groups
            config_digest=config_digest("data", "train", "arch_vocab"),
            hparams=lambda wc: CFG.hparams_for(wc.target, wc.arch),  # the target's own too
        threads: CFG.threads
        resources:
            gpu=gpu_resources,
            gpu_model=lambda wc: CFG.targets[wc.target].gpu_model_for(wc.arch),
        conda:
            ENV
        script:
            SCRIPT

    rule group_draft:
        """One draft of a trained group, at its matrix path (hard links, no copy)."""
        input:
            group=group_of,
        output:
            model=f"{DRAFT_DIR}/model.safetensors",
            log_csv=f"{DRAFT_DIR}/train_log.csv",
            status=f"{DRAFT_DIR}/train_status.json",
        log:
            f"{R}/logs/group_draft/{{target}}/{{arch}}/{{loss}}/seed{{seed}}.log",
        wildcard_constraints:
            loss="|".join(re.escape(loss_slug(loss)) for loss in CFG.all_losses),  # not external
        params:
            folder=lambda wc: f"{group_of(wc)}/{wc.loss}/seed{wc.seed}",
        localrule: True
        conda:
            ENV
        script:
            SCRIPT
