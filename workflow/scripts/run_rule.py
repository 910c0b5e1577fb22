# The script of every rule: the work is the stage of specbench.jobs named after the rule.
from specbench.jobs import run_rule

run_rule(snakemake)
