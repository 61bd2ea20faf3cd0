# Two commands: `make run` (install + start the app) and `make test` (install + lint + run the tests).
# Installs into .venv with the CPU build of torch; see README for a GPU box.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test test-fast lint bench prepare clean-cache

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

prepare: install
	$(VENV)/bin/lab models prepare gemma-3-270m
	$(VENV)/bin/lab models prepare smollm2-135m-instruct

run: install
	$(VENV)/bin/streamlit run app.py

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q -p no:cacheprovider tests

# The tests that load no real model and drive no browser (marks set in tests/conftest.py); a real model
# loaded by an unmarked test fails the run.
test-fast: install lint
	$(PY) -m pytest -q -p no:cacheprovider -m "not real_model and not browser and not ray" tests

bench: install
	$(PY) benchmarks/run_all.py

clean-cache:
	rm -rf cache/models cache/gguf

# The uncertainty study, two stages, each resumable (rerun to continue), report in reports/uq:
# 1. exploration: 1000 WebQuestions (seeded sample) + the bundled set, K = 10, embedded model; fixes one contrast
#    (reports/uq/confirmation_plan.json);
# 2. confirmation: the 1032 WebQuestions test questions the sample leaves out, that contrast tested once (skipped
#    when reports/uq/confirmation.json exists: it runs once). Extra flags: make study-uq ARGS="--model <id>".
.PHONY: study-uq
study-uq: install
	$(PY) -m engine uq-study --out reports/uq $(ARGS)
	test -f reports/uq/confirmation.json || $(PY) -m engine uq-study --confirm --out reports/uq $(ARGS)

# The sink / super-weight / grokking study: LLM-shaped model on the markov task (a task that needs a sink),
# 4 arms (control, zero the tracked super-weight candidate, zero a random weight of its matrix, the 5-token task)
# x 6 paired seeds = 24 runs, 2 worker processes (control runs took 4-22 min, mean 12, on this 2-core CPU under
# load average ~14 in the formation check: about 2.5 h in all); cached and resumable (rerun to continue), report in
# reports/grokking. Extra flags: make study-grok ARGS="--report-only" (or ARGS="--seeds 0,1 --steps 40 ...").
.PHONY: study-grok
study-grok: install
	$(PY) -m engine grok-study $(ARGS)

# The attention study: every head of the model, self-explanations (free text and rule pick) against
# the detector's best rule, a token-feature probe and controls, scored on held-out prompts; cached per head and
# resumable (rerun to continue), report in reports/attention. Extra flags: make study-attention ARGS="--max-heads 72
# --model HuggingFaceTB/SmolLM2-135M-Instruct --out reports/attention/smollm2".
.PHONY: study-attention
study-attention: install
	$(PY) -m engine attention-study $(ARGS)
