rule prompts:
    """Disjoint train/eval prompts of a domain: offline sources, or data.sources datasets."""
    output:
        f"{R}/data/prompts/{{domain}}.json",
    log:
        f"{R}/logs/prompts/{{domain}}.log",
    params:
        settings=settings("data"),
    conda:
        ENV
    script:
        "../scripts/prompts.py"


rule responses:
    """The target regenerates responses: T=1 for train and eval_t1, greedy for eval_t0."""
    input:
        prompts=f"{R}/data/prompts/{{domain}}.json",
        target=target_source,
    output:
        responses=f"{R}/data/responses/{{target}}/{{split}}/{{domain}}.jsonl",
    log:
        f"{R}/logs/responses/{{target}}/{{split}}/{{domain}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        settings=settings("data", "targets"),
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
    conda:
        ENV
    script:
        "../scripts/responses.py"


rule draft_vocab:
    """Truncated draft vocabulary: the most frequent tokens of the training responses."""
    input:
        expand(f"{R}/data/responses/{{{{target}}}}/train/{{domain}}.jsonl", domain=CFG.domains),
    output:
        f"{R}/data/vocab/{{target}}.json",
    log:
        f"{R}/logs/draft_vocab/{{target}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        settings=settings("data"),
    conda:
        ENV
    script:
        "../scripts/draft_vocab.py"


rule features:
    """Run the target once over a split and cache features + sliced log-probs."""
    input:
        responses=lambda wc: (
            expand(f"{R}/data/responses/{wc.target}/train/{{d}}.jsonl", d=CFG.domains)
            if wc.split == "train"
            else [f"{R}/data/responses/{wc.target}/{wc.split}/{wc.name}.jsonl"]
        ),
        vocab=f"{R}/data/vocab/{{target}}.json",
        target=target_source,
    output:
        cache=f"{R}/features/{{target}}/{{split}}/{{name}}.safetensors",
    log:
        f"{R}/logs/features/{{target}}/{{split}}/{{name}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        settings=settings("data", "targets"),
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
    conda:
        ENV
    script:
        "../scripts/features.py"
