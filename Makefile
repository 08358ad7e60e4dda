# Orchestration only: the logic lives in src/sctab, the stages in dvc.yaml.
# The two commands of the README work on a fresh clone: `make repro` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= tiny
PYTEST_ARGS ?=
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: venv repro test test-fast params status push pull clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: on these machines this takes the local CPU build (no CUDA download)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed  ## create .venv and install the project

params: venv  ## write params.yaml from conf/profiles/$(PROFILE).yaml
	$(VENV)/bin/sctab params --profile $(PROFILE)

repro: venv  ## run the default DVC pipeline (embedded census unless params.yaml says otherwise)
	$(VENV)/bin/dvc repro

status: venv  ## what dvc would re-run
	$(VENV)/bin/dvc status

push: venv  ## push DVC outputs to the default remote (dvc-remote/ unless configured)
	$(VENV)/bin/dvc push

pull: venv
	$(VENV)/bin/dvc pull

test: venv  ## the whole test suite, slow end-to-end tests included
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv  ## unit tests only
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:  ## remove pipeline outputs (not the venv, not the DVC cache)
	rm -rf data reports
