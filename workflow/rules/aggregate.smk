rule aggregate:
    """tau.csv (one row per cell) and the paired gains of every loss vs the baseline."""
    input:
        metrics=[f"{d}/metrics.json" for d in matrix_dirs("eval")],
        per_prompt=[f"{d}/per_prompt.csv" for d in matrix_dirs("eval")],
        served=[f"{d}/served.csv" for d in served_dirs()],
    output:
        tau=f"{R}/tables/tau.csv",
        gains=f"{R}/tables/gains.csv",
        gains_md=f"{R}/tables/gains.md",
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
        gains=f"{R}/plots/gains.png",
        acceptance=f"{R}/plots/acceptance.png",
    log:
        f"{R}/logs/plots.log",
    conda:
        ENV
    script:
        SCRIPT
