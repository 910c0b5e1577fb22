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


# train/{domain}.jsonl has up to three producers; released completions win, and with
# data.response_shard_prompts set, `responses` makes the evaluation splits only
ruleorder: train_completions > responses


rule responses:
    """The target regenerates responses of a split (specbench.data.splits.SPLITS)."""
    input:
        prompts=f"{R}/data/prompts/{{domain}}.json",
        target=target_source,
    output:
        responses=f"{R}/data/responses/{{target}}/{{split}}/{{domain}}.jsonl",
    log:
        f"{R}/logs/responses/{{target}}/{{split}}/{{domain}}.log",
    wildcard_constraints:
        split="|".join(s for s in SPLITS if not (SHARDED and SPLITS[s].is_train)),
    params:
        model=lambda wc: target_model(wc.target),
        config_digest=data_digest(generates=True),
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
        gpu_model=target_gpu_model,
    conda:
        ENV
    script:
        SCRIPT


if SHARDED:

    ruleorder: train_completions > responses_gather

    rule responses_shard:
        """The target regenerates the training responses of one shard of a domain's prompts."""
        input:
            prompts=f"{R}/data/prompts/{{domain}}.json",
            target=target_source,
        output:
            responses=f"{R}/data/responses/{{target}}/train/{{domain}}/shard{{shard}}.jsonl",
        log:
            f"{R}/logs/responses/{{target}}/train/{{domain}}/shard{{shard}}.log",
        wildcard_constraints:
            shard=r"\d+",
        params:
            model=lambda wc: target_model(wc.target),
            config_digest=data_digest(generates=True),
        threads: CFG.threads
        resources:
            gpu=gpu_resources,
            gpu_model=target_gpu_model,
        conda:
            ENV
        script:
            SCRIPT

    rule responses_gather:
        """One file of a (target, domain)'s training responses from its shards, in order."""
        input:
            shards=response_shards,
        output:
            responses=f"{R}/data/responses/{{target}}/train/{{domain}}.jsonl",
        log:
            f"{R}/logs/responses/{{target}}/train/{{domain}}.gather.log",
        params:
            config_digest=config_digest("data"),
        conda:
            ENV
        script:
            SCRIPT


rule train_completions:
    """Training responses of a (target, domain) read from the target's released completions."""
    input:
        prompts=f"{R}/data/prompts/{{domain}}.json",
        target=target_source,
    output:
        responses=f"{R}/data/responses/{{target}}/train/{{domain}}.jsonl",
    log:
        f"{R}/logs/responses/{{target}}/train/{{domain}}.released.log",
    wildcard_constraints:
        target=released_target(),
    params:
        model=lambda wc: target_model(wc.target),
        config_digest=data_digest(),
    conda:
        ENV
    script:
        SCRIPT


rule draft_vocab:
    """A draft vocabulary: truncated (most frequent training tokens) or full (identity)."""
    input:
        responses=train_responses,
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
        responses=train_responses,
        vocab=f"{R}/data/vocab/{{target}}/{{vocab}}.json",
        target=target_source,
    output:
        cache=f"{R}/features/{{target}}/{{vocab}}/train.safetensors",
    log:
        f"{R}/logs/features/{{target}}/{{vocab}}/train.log",
    params:
        model=lambda wc: target_model(wc.target),
        config_digest=data_digest(),
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
        gpu_model=target_gpu_model,
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
        config_digest=features_eval_digest,
    threads: CFG.threads
    resources:
        gpu=gpu_resources,
        gpu_model=target_gpu_model,
    conda:
        ENV
    script:
        SCRIPT
