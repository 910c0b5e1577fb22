# Drafts in and out of the peers' formats (specbench.formats): external drafts enter the
# matrix as results/drafts/<target>/<arch>/external-<name>/seed0 (then evaluate_draft and
# aggregate as for a trained draft); `snakemake export_drafts` writes every draft of the run
# in every format its architecture exports to, under results/export/.

if CFG.train.features == "cache":  # online: group_draft makes only the matrix's losses

    ruleorder: import_draft > train_draft


ruleorder: external_vocab > draft_vocab


wildcard_constraints:
    name="|".join(EXTERNAL),
    format="|".join(FORMATS),


rule external_vocab:
    """An external draft's own draft vocabulary (external_drafts: vocab: own)."""
    output:
        vocab=f"{R}/data/vocab/{{target}}/{EXTERNAL_SLUG}{{name}}.json",
    log:
        f"{R}/logs/external_vocab/{{target}}/{{name}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        config_digest=config_digest("external_drafts"),
    conda:
        ENV
    script:
        SCRIPT


rule import_draft:
    """A draft trained elsewhere, saved in specbench's own format (load_external)."""
    input:
        vocab=lambda wc: f"{R}/data/vocab/{wc.target}/{EXTERNAL[wc.name].vocab_name}.json",
        target=target_source,
    output:
        model=f"{R}/drafts/{{target}}/{{arch}}/{EXTERNAL_SLUG}{{name}}/seed0/model.safetensors",
    log:
        f"{R}/logs/import_draft/{{target}}/{{arch}}/{{name}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        config_digest=config_digest("external_drafts"),
    conda:
        ENV
    script:
        SCRIPT


rule export_draft:
    """One draft of the run in one peer format (or NOT_EXPORTED.txt saying why not)."""
    input:
        draft=f"{R}/drafts/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/model.safetensors",
        vocab=lambda wc: f"{R}/data/vocab/{wc.target}/{eval_vocab(wc)}.json",
        target=target_source,
    output:
        dir=directory(f"{R}/export/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/{{format}}"),
    log:
        f"{R}/logs/export/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/{{format}}.log",
    params:
        model=lambda wc: target_model(wc.target),
        k=lambda wc: CFG.eval.k_for(wc.arch),
    conda:
        ENV
    script:
        SCRIPT


rule export_drafts:
    """Every draft of the run (trained and external) in every format it exports to."""
    localrule: True
    input:
        export_dirs(),
