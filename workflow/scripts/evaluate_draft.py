import sys

sys.path.insert(0, "workflow/scripts")
from _common import setup

from specbench.jobs import Job, launch

setup(snakemake)
launch(Job.from_snakemake(snakemake, "evaluate"))  # on resources.gpu ranks (torchrun if > 1)
