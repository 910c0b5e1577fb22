# Served τ (eval.served; issue 20): every draft whose architecture vLLM serves, exported and
# served with its target by vLLM's speculative decoding in the serving venv (`make
# serve-env`) on the eval prompts; aggregate puts tau_served beside the estimates.

rule serve_draft:
    """One draft served by vLLM on every domain's eval prompts at every temperature."""
    input:
        draft=f"{R}/drafts/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/model.safetensors",
        caches=lambda wc: expand(
            f"{R}/features/{wc.target}/{eval_vocab(wc)}/{{split}}/{{domain}}.safetensors",
            split=EVAL_SPLITS,
            domain=CFG.domains,
        ),
        target=target_source,
    output:
        served=f"{R}/served/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/served.csv",
        summary=f"{R}/served/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/served.json",
    log:
        f"{R}/logs/serve/{{target}}/{{arch}}/{{loss}}/seed{{seed}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        loss=lambda wc: LOSS_BY_SLUG[wc.loss],
        config_digest=lambda wc: config_digest("data", "eval", "temperatures", "domains", "arch_vocab")
        + f":{CFG.eval.served_draft_sampling}",
    threads: CFG.threads
    conda:
        ENV
    script:
        SCRIPT


rule served_plot:
    """Served vs estimated τ with 95% CIs and the diagonal (one point per draft and T)."""
    input:
        tau=f"{R}/tables/tau.csv",
    output:
        plot=report(
            f"{R}/plots/served.png", caption="../report/served.rst", category="Served vs estimated"
        ),
    log:
        f"{R}/logs/served_plot.log",
    conda:
        ENV
    script:
        SCRIPT
