# Two commands: `make run` (install + start the app) and `make test` (install + lint + run the tests).
# Installs into .venv with the CPU build of torch; see README for a GPU box.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test lint bench prepare clean-cache

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

prepare: install
	$(VENV)/bin/lab models prepare gemma-3-270m

run: install
	$(VENV)/bin/streamlit run app.py

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q -p no:cacheprovider tests

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

# The super-weight / grokking study (issue 14): LLM-shaped model, 5 seeds x 2 weight decays, control vs
# suppression, 2 worker processes; cached and resumable (rerun to continue), report in reports/grokking.
# Extra flags: make study-grok ARGS="--report-only".
.PHONY: study-grok
study-grok: install
	$(PY) -m engine grok-study $(ARGS)
