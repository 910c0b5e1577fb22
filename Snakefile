# specbench: the experiment matrix as a DAG. Rules live in workflow/rules/; this file only
# includes them and names the default target. Config: configs/default.yaml (override with
# --configfile / --config); profiles: workflow/profiles/{local,slurm}.
# `snakemake --report results/report.html` (make report): one self-contained HTML file of the
# outputs flagged report(...) in the rules, captioned from workflow/report/.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/target.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/serve.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/curve.smk"
include: "workflow/rules/formats.smk"


rule all:
    default_target: True
    input:
        rules.aggregate.output,
        rules.plots.output,
        [f"{R}/plots/served.png"] if served_dirs() else [],
