rule prompts:
    """Disjoint train/eval prompts of a domain: offline sources, or data.sources datasets."""
    output:
        prompts=f"{R}/data/prompts/{{domain}}.json",
    log:
        f"{R}/logs/prompts/{{domain}}.log",
    params:
        config_digest=config_digest("data"),
    conda:
        ENV
    script:
        SCRIPT


rule responses:
    """The target regenerates responses of a split (specbench.data.splits.SPLITS)."""
    input:
        prompts=f"{R}/data/prompts/{{domain}}.json",
        target=target_source,
    output:
        responses=f"{R}/data/responses/{{target}}/{{split}}/{{domain}}.jsonl",
    log:
        f"{R}/logs/responses/{{target}}/{{split}}/{{domain}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        config_digest=config_digest("data", "targets"),
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
    conda:
        ENV
    script:
        SCRIPT


rule draft_vocab:
    """A draft vocabulary: truncated (most frequent training tokens) or full (identity)."""
    input:
        responses=expand(
            f"{R}/data/responses/{{{{target}}}}/train/{{domain}}.jsonl", domain=CFG.domains
        ),
    output:
        vocab=f"{R}/data/vocab/{{target}}/{{vocab}}.json",
    log:
        f"{R}/logs/draft_vocab/{{target}}/{{vocab}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        config_digest=config_digest("data"),
    conda:
        ENV
    script:
        SCRIPT


rule features_train:
    """Run the target once over every domain's training responses: one training cache."""
    input:
        responses=expand(
            f"{R}/data/responses/{{{{target}}}}/train/{{domain}}.jsonl", domain=CFG.domains
        ),
        vocab=f"{R}/data/vocab/{{target}}/{{vocab}}.json",
        target=target_source,
    output:
        cache=f"{R}/features/{{target}}/{{vocab}}/train.safetensors",
    log:
        f"{R}/logs/features/{{target}}/{{vocab}}/train.log",
    params:
        model=lambda wc: target_model(wc.target),
        config_digest=config_digest("data", "targets"),
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
    conda:
        ENV
    script:
        SCRIPT


rule features_eval:
    """Run the target once over one evaluation split of one domain and cache it."""
    input:
        responses=[f"{R}/data/responses/{{target}}/{{split}}/{{domain}}.jsonl"],
        vocab=f"{R}/data/vocab/{{target}}/{{vocab}}.json",
        target=target_source,
    output:
        cache=f"{R}/features/{{target}}/{{vocab}}/{{split}}/{{domain}}.safetensors",
    log:
        f"{R}/logs/features/{{target}}/{{vocab}}/{{split}}/{{domain}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        config_digest=config_digest("data", "targets"),
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
    conda:
        ENV
    script:
        SCRIPT
