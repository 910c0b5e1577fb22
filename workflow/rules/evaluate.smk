rule evaluate_draft:
    """Expected τ and live/replayed τ of one draft on every domain × temperature."""
    input:
        draft=f"{R}/drafts/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/model.safetensors",
        caches=lambda wc: expand(
            f"{R}/features/{wc.target}/{eval_vocab(wc)}/{{split}}/{{domain}}.safetensors",
            split=EVAL_SPLITS,
            domain=CFG.domains,
        ),
        target=target_source,
    output:
        metrics=f"{R}/eval/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/metrics.json",
        per_prompt=f"{R}/eval/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/per_prompt.csv",
    log:
        f"{R}/logs/evaluate/{{target}}/{{arch}}/{{loss}}/seed{{seed}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        loss=lambda wc: LOSS_BY_SLUG[wc.loss],
        config_digest=config_digest("data", "eval", "temperatures", "domains", "arch_vocab"),
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
        gpu_model=lambda wc: CFG.targets[wc.target].gpu_model_for(wc.arch),
    conda:
        ENV
    script:
        SCRIPT
