rule aggregate:
    """tau.csv (one row per cell) and the paired gains of every loss vs the baseline."""
    input:
        metrics=[f"{d}/metrics.json" for d in matrix_dirs("eval")],
        per_prompt=[f"{d}/per_prompt.csv" for d in matrix_dirs("eval")],
        served=[f"{d}/served.csv" for d in served_dirs()],
    output:
        # report(): `snakemake --report` (make report); captions in workflow/report/
        tau=report(f"{R}/tables/tau.csv", caption="../report/tau.rst", category="τ per cell"),
        gains=report(
            f"{R}/tables/gains.csv", caption="../report/gains.rst", category="Gains vs baseline"
        ),
        gains_md=report(
            f"{R}/tables/gains.md", caption="../report/gains_md.rst", category="Gains vs baseline"
        ),
    log:
        f"{R}/logs/aggregate.log",
    params:
        config_digest=config_digest("baseline_loss", "eval", "note"),
    conda:
        ENV
    script:
        SCRIPT


rule plots:
    """Gains with CIs and per-position acceptance, as PNG."""
    input:
        tau=f"{R}/tables/tau.csv",
        gains=f"{R}/tables/gains.csv",
    output:
        gains=report(
            f"{R}/plots/gains.png", caption="../report/gains_plot.rst", category="Gains vs baseline"
        ),
        acceptance=report(
            f"{R}/plots/acceptance.png", caption="../report/acceptance.rst", category="τ per cell"
        ),
    log:
        f"{R}/logs/plots.log",
    conda:
        ENV
    script:
        SCRIPT
