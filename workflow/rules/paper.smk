rule paper_figures:
    """Our measurements beside the papers' published numbers (shared/reference)."""
    input:
        tau=f"{R}/tables/tau.csv",
        gains=f"{R}/tables/gains.csv",
    output:
        dir=report(
            directory("paper_figures/generated"),
            patterns=["{name}.png", "{name}.csv"],
            caption="../report/paper.rst",
            category="Paper figures",
        ),
    log:
        f"{R}/logs/paper_figures.log",
    params:
        reference="paper_figures/reference",
    conda:
        ENV
    script:
        SCRIPT
