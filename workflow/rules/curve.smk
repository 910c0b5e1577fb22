# The learning curve of one (architecture, loss, seed) on the first target: every point is a
# draft trained from scratch (steps × data fraction), evaluated like a matrix cell. Not part
# of `all`: `snakemake --cores 2 learning_curve`.
rule curve_train:
    """One learning-curve point: a draft trained for {steps} steps on a {data} share of the data."""
    input:
        cache=lambda wc: f"{R}/features/{wc.target}/{CFG.vocab_for(wc.arch)}/train.safetensors",
        target=target_source,
    output:
        model=f"{CURVE_DIR}/model.safetensors",
        log_csv=f"{CURVE_DIR}/train_log.csv",
    log:
        f"{R}/logs/curve/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/train_steps{{steps}}_data{{data}}.log",
    wildcard_constraints:
        steps=r"\d+",
        data=r"[0-9.]+",
    params:
        model=lambda wc: target_model(wc.target),
        loss=curve_loss,
        config_digest=config_digest("data", "train", "arch_vocab"),
        hparams=lambda wc: CFG.hparams_for(wc.target, wc.arch),  # the target's own too
    threads: CFG.threads
    resources:
        gpu=lambda wc: min(1, CFG.targets[wc.target].gpus),
    conda:
        ENV
    script:
        SCRIPT


rule curve_eval:
    """τ of one learning-curve point, measured as the matrix measures its cells."""
    input:
        draft=f"{CURVE_DIR}/model.safetensors",
        caches=lambda wc: expand(
            f"{R}/features/{wc.target}/{CFG.vocab_for(wc.arch)}/{{split}}/{{domain}}.safetensors",
            split=EVAL_SPLITS,
            domain=CFG.domains,
        ),
        target=target_source,
    output:
        metrics=f"{CURVE_DIR}/metrics.json",
        per_prompt=f"{CURVE_DIR}/per_prompt.csv",
    log:
        f"{R}/logs/curve/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/eval_steps{{steps}}_data{{data}}.log",
    wildcard_constraints:
        steps=r"\d+",
        data=r"[0-9.]+",
    params:
        model=lambda wc: target_model(wc.target),
        loss=curve_loss,
        config_digest=config_digest("data", "eval", "temperatures", "domains", "arch_vocab"),
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
        gpu_model=lambda wc: CFG.targets[wc.target].gpu_model_for(wc.arch),
    conda:
        ENV
    script:
        SCRIPT


rule learning_curve:
    """τ against training steps, tokens seen and data: table and plot."""
    input:
        metrics=lambda wc: [f"{d}/metrics.json" for d in curve_dirs()],
        logs=lambda wc: [f"{d}/train_log.csv" for d in curve_dirs()],
    output:
        table=report(
            f"{R}/tables/learning_curve.csv",
            caption="../report/curve_table.rst",
            category="Learning curve",
        ),
        plot=report(
            f"{R}/plots/learning_curve.png",
            caption="../report/curve_plot.rst",
            category="Learning curve",
        ),
    log:
        f"{R}/logs/learning_curve.log",
    params:
        # the truncated vocabulary's file counts the training response tokens (for epochs)
        vocab=lambda wc: f"{R}/data/vocab/{next(iter(CFG.targets))}/truncated.json",
    conda:
        ENV
    script:
        SCRIPT
