rule train_draft:
    """Train one draft architecture with one loss and seed on the cached features."""
    input:
        cache=lambda wc: f"{R}/features/{wc.target}/{CFG.vocab_for(wc.arch)}/train.safetensors",
        target=target_source,
    output:
        model=f"{R}/drafts/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/model.safetensors",
        log_csv=f"{R}/drafts/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/train_log.csv",
    log:
        f"{R}/logs/train/{{target}}/{{arch}}/{{loss}}/seed{{seed}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        loss=lambda wc: LOSS_BY_SLUG[wc.loss],
        config_digest=config_digest("data", "train", "arch_hparams", "arch_vocab"),
    threads: CFG.threads
    resources:
        gpu=lambda wc: min(1, CFG.targets[wc.target].gpus),
    conda:
        ENV
    script:
        SCRIPT
