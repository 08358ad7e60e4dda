# Orchestration only: the logic lives in src/sctab, the stages in dvc.yaml.
# The two commands of the README work on a fresh clone: `make repro` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= tiny
PYTEST_ARGS ?=
DEVICE  ?=
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: seed-spread venv repro test test-fast test-gpu fuzz params status bench-heap push pull clean help postgres merlin-env test-merlin anchors-env test-anchors annbatch-env test-annbatch ui metrics \
	tune-baselines tune-sctab apply-tuned sweep-model-size sweep-data-size exp-augmentation exp-organ experiments \
	register promote serve annotate models browser census-realism

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

# The PostgreSQL server the MLflow-server tests start (tests/mlflow_server.py): the Debian package, installed
# only when initdb is missing and only as root; otherwise a clear error. A no-op when it is there.
postgres:  ## make sure PostgreSQL server binaries (initdb, pg_ctl) are installed
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing the Debian package postgresql (tests start a throw-away server)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "PostgreSQL server binaries not found: install the postgresql package (as root: make postgres)," \
		"or set SCTAB_PG_BINDIR to the folder holding initdb and pg_ctl" >&2; exit 1; fi

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

UI_PORT ?= 5000
ui: venv  ## MLflow UI on http://127.0.0.1:$(UI_PORT) over the local tracking store
	$(VENV)/bin/mlflow ui --backend-store-uri $(TRACKING) --host 127.0.0.1 --port $(UI_PORT)

# The registry (MLflow, local sqlite store unless MLFLOW_TRACKING_URI says otherwise). `make repro` ends with the
# `register` stage: every model folder becomes a version with alias @challenger.
MODEL      ?= sctab-ensemble
MODEL_URI  ?= models:/$(MODEL)@champion
SERVE_PORT ?= 5001
WORKERS    ?= 1
TRACKING   := $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db}
register: venv  ## register the trained models (dvc repro register): new versions get @challenger
	$(VENV)/bin/dvc repro register

models: venv  ## registered models, versions, aliases and test F1
	$(VENV)/bin/sctab models

promote: venv  ## move @champion of MODEL to @challenger if its test F1 is at least as good (FORCE=1, VERSION=n, CHECK=cells.h5ad)
	$(VENV)/bin/sctab promote --model $(MODEL) $(if $(VERSION),--version $(VERSION)) $(if $(FORCE),--force) $(if $(CHECK),--check $(CHECK))

serve: venv  ## serve MODEL_URI (default models:/sctab-ensemble@champion) on http://127.0.0.1:$(SERVE_PORT)/invocations (WORKERS=n processes)
	SCTAB_DEVICE=$(or $(DEVICE),auto) MLFLOW_TRACKING_URI=$(TRACKING) $(VENV)/bin/mlflow models serve -m $(MODEL_URI) \
		--env-manager local --host 127.0.0.1 --port $(SERVE_PORT) --workers $(WORKERS)

annotate: venv  ## label INPUT=cells.h5ad with MODEL_URI -> OUTPUT (default INPUT's name + .annotated.h5ad)
	@test -n "$(INPUT)" || { echo "usage: make annotate INPUT=cells.h5ad [OUTPUT=out.h5ad|.csv|.parquet] [MODEL_URI=models:/...] [DEVICE=cuda] [ANNOTATE_ARGS='--majority-voting ...']"; exit 2; }
	$(VENV)/bin/sctab annotate $(INPUT) -o $(or $(OUTPUT),$(basename $(INPUT)).annotated.h5ad) --model $(MODEL_URI) \
		$(if $(DEVICE),--device $(DEVICE)) $(ANNOTATE_ARGS)

metrics: venv  ## each trained model's validation/test macro F1 (DVC metrics)
	$(VENV)/bin/dvc metrics show

# Ray Tune + Optuna studies of the baselines (params.yaml `tune`, search spaces in conf/tune/), outside the
# default DAG. Re-running resumes an interrupted study; TUNE_ARGS="--fresh" starts over, "--model xgboost" picks.
SEED_ARGS ?=
TUNE_ARGS ?=
census-realism: venv  ## the embedded census beside real 10x data shipped in packages -> reports/census/realism.*
	$(PY) pipelines/census_realism.py --params params.yaml

seed-spread: venv  ## each single model's test F1 over ensemble.seeds (mean ± sd) -> reports/seeds/
	$(VENV)/bin/dvc repro train_linear train_mlp train_xgboost train_celltypist
	$(PY) pipelines/seed_spread.py --params params.yaml $(SEED_ARGS)

tune-baselines: venv  ## tune the baselines (Ray Tune + Optuna); default-vs-tuned table in reports/tune/
	$(VENV)/bin/dvc repro pca augment
	$(PY) pipelines/tune.py --params params.yaml $(TUNE_ARGS)

tune-sctab: venv  ## tune scTab itself (Ray Tune + Optuna, conf/tune/sctab.yaml): lr, weight decay, decay, batch size
	$(VENV)/bin/dvc repro augment
	$(PY) pipelines/tune.py --params params.yaml --model sctab $(TUNE_ARGS)

apply-tuned: venv  ## write the best settings of the last studies into params.yaml (then `make repro`)
	$(PY) pipelines/tune.py --params params.yaml --apply-only $(TUNE_ARGS)

# The paper's experiments (params.yaml `experiments`), outside the default DAG: each point a Ray Tune trial and an
# MLflow run; finished points are reused, an interrupted sweep resumes. EXP_ARGS="--fresh" retrains every point.
EXP_ARGS ?=
sweep-model-size: venv  ## scTab widths vs test F1/loss (Fig. 2f) -> reports/experiments/model-size/
	$(VENV)/bin/dvc repro augment
	$(PY) pipelines/experiment.py model-size --params params.yaml $(EXP_ARGS)

sweep-data-size: venv  ## random-cell vs donor subsets, scTab and linear (Fig. 2b/2d)
	$(VENV)/bin/dvc repro augment
	$(PY) pipelines/experiment.py data-size --params params.yaml $(EXP_ARGS)

exp-augmentation: venv  ## with vs without augmentation, paired over seeds; R^2 check (Supp. Tables 3, 7)
	$(VENV)/bin/dvc repro augment
	$(PY) pipelines/experiment.py augmentation --params params.yaml $(EXP_ARGS)

exp-organ: venv  ## lung-only vs cross-organ training, scored on lung test cells (Supp. Table 2)
	$(VENV)/bin/dvc repro augment
	$(PY) pipelines/experiment.py organ --params params.yaml $(EXP_ARGS)

experiments: sweep-model-size sweep-data-size exp-augmentation exp-organ  ## all four experiments

# The browser test of the MLflow UI drives Debian's Chromium (headless, through Playwright's Python client).
CHROMIUM ?= /usr/bin/chromium
browser:  ## Debian's chromium for the UI test (installed with apt-get when missing and running as root)
	@test -x $(CHROMIUM) || { test "$$(id -u)" = 0 || { echo "the UI test needs Debian's chromium: sudo apt-get install chromium"; exit 1; }; \
		apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }

test: venv browser postgres  ## the whole test suite, slow end-to-end tests included, and its 25 slowest
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

test-fast: venv  ## unit tests only
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The GPU suite (tests/models/test_gpu.py, docs/gpu.md): skipped with its reason where torch sees no CUDA device.
test-gpu: venv  ## the GPU suite (pytest -m gpu): CUDA == CPU, Ray Train on a GPU, XGBoost on CUDA, bf16
	$(PY) -m pytest -m gpu -rs $(PYTEST_ARGS)

fuzz: venv  ## the hypothesis tests with new random examples (make test replays fixed ones); SEED=n to replay
	$(PY) -m pytest tests/sctab_data/test_store_fuzz.py tests/annotation/test_annotate_fuzz.py --hypothesis-profile=explore $(if $(SEED),--hypothesis-seed=$(SEED)) -s $(PYTEST_ARGS)

# merlin-dataloader 23.8 (optional loader backend) cannot share the main env: it needs pip 23.2 to install,
# pandas<1.6 (so numpy<2) and dask 2023.9.x (docs/published-artifacts.md). Pins: the `merlin`
# extra of pyproject.toml. dask-cuda is pinned (merlin-core needs it) because later releases depend on
# rapids-dask-dependency, a stub that downloads from an NVIDIA index; 23.10 pins dask/distributed 2023.9.2
# (not the 2023.9.3 of the pitfalls note). pyarrow 22+ refuses numpy 1.x at import. The project goes in
# with --no-deps, plus only what sctab.data.loaders and tests/sctab_data/test_loaders.py import.
MERLIN_VENV ?= .venv-merlin
MERLIN_PY   := $(MERLIN_VENV)/bin/python

$(MERLIN_VENV)/.installed: pyproject.toml
	python3 -m venv $(MERLIN_VENV)
	$(MERLIN_PY) -m pip install --quiet "pip==23.2"
	$(MERLIN_PY) -m pip install --quiet torch==2.13.0
	$(MERLIN_PY) -m pip install --quiet $$($(MERLIN_PY) -c "import tomllib; \
		print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['merlin']))") \
		scipy tqdm pyyaml xxhash "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100"
	$(MERLIN_PY) -m pip install --quiet --no-deps -e .
	touch $@

merlin-env: $(MERLIN_VENV)/.installed  ## create .venv-merlin with merlin-dataloader 23.8 (optional backend)

test-merlin: merlin-env  ## the merlin loader tests, in .venv-merlin
	$(MERLIN_PY) -m pytest tests/sctab_data/test_loaders.py -k merlin $(PYTEST_ARGS)

# Loader anchors of the bench (issue 26; docs/loader-anchors.md): scDataset and tiledbsoma-ml in their own venv
# (Python 3.11 from /usr/bin, torch pinned first so pip takes the local CPU build), the project with --no-deps
# plus what sctab.bench and tests/bench/test_loader_anchors.py import. `make bench` skips the anchor rows without it.
ANCHORS_VENV   ?= .venv-anchors
ANCHORS_PY     := $(ANCHORS_VENV)/bin/python
ANCHORS_PYTHON ?= /usr/bin/python3.11

$(ANCHORS_VENV)/.installed: pyproject.toml
	$(ANCHORS_PYTHON) -m venv $(ANCHORS_VENV)
	$(ANCHORS_PY) -m pip install --quiet --upgrade pip
	$(ANCHORS_PY) -m pip install --quiet torch==2.13.0
	$(ANCHORS_PY) -m pip install --quiet $$($(ANCHORS_PY) -c "import tomllib; \
		print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['anchors']))") \
		numpy scipy pandas pyarrow psutil pyyaml tqdm xxhash "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100"
	$(ANCHORS_PY) -m pip install --quiet --no-deps -e .
	touch $@

anchors-env: $(ANCHORS_VENV)/.installed  ## create .venv-anchors with scDataset 0.3 and tiledbsoma-ml 0.1 (bench anchors)

test-anchors: anchors-env  ## the loader-anchor tests, in .venv-anchors
	$(ANCHORS_PY) -m pytest tests/bench/test_loader_anchors.py $(PYTEST_ARGS)

# annbatch 0.3 needs Python >= 3.12 (pyenv's 3.12.1 here), anndata >= 0.12.9, zarr >= 3.1.4 and dask, plus
# zarrs (its docs: the Rust codec pipeline for local-filesystem throughput): its own venv, .venv-annbatch.
ANNBATCH_VENV   ?= .venv-annbatch
ANNBATCH_PY     := $(ANNBATCH_VENV)/bin/python
ANNBATCH_PYTHON ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.12.1/bin/python

$(ANNBATCH_VENV)/.installed: pyproject.toml
	@test -x "$(ANNBATCH_PYTHON)" || { echo "annbatch needs Python >= 3.12: set ANNBATCH_PYTHON (not found: $(ANNBATCH_PYTHON))" >&2; exit 1; }
	$(ANNBATCH_PYTHON) -m venv $(ANNBATCH_VENV)
	$(ANNBATCH_PY) -m pip install --quiet --upgrade pip
	$(ANNBATCH_PY) -m pip install --quiet torch==2.13.0
	$(ANNBATCH_PY) -m pip install --quiet $$($(ANNBATCH_PY) -c "import tomllib; \
		print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['annbatch']))") \
		numpy scipy pandas pyarrow psutil pyyaml tqdm xxhash "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100"
	$(ANNBATCH_PY) -m pip install --quiet --no-deps -e .
	touch $@

annbatch-env: $(ANNBATCH_VENV)/.installed  ## create .venv-annbatch (Python 3.12) with annbatch 0.3 (bench anchor)

test-annbatch: annbatch-env  ## the loader-anchor tests, in .venv-annbatch (the annbatch ones run there)
	$(ANNBATCH_PY) -m pytest tests/bench/test_loader_anchors.py $(PYTEST_ARGS)

# Loader and scTab throughput vs in-run baselines (issue 7); synthetic stores cached in benchmarks/.cache/.
# BENCH_ARGS="--quick" for a smoke run, "--cases loader_csr infer_csr" for a subset; DEVICE=cuda adds the GPU
# rows (loader to device, training step, inference, annotate; docs/gpu.md).
BENCH_ARGS ?=
.PHONY: bench
bench: venv  ## throughput table (medians, baselines, targets, peak RSS) -> benchmarks/results/<date>-<time>.md
	$(PY) benchmarks/run.py $(if $(DEVICE),--device $(DEVICE)) $(BENCH_ARGS)

# A target counts as met from the median of three runs at different hours: run `make bench` three times, then
# this summarises the three newest run records (or RUNS="a.json b.json c.json") -> benchmarks/results/summary-<date>.md
RUNS ?=
.PHONY: bench-summary
bench-summary: venv  ## median/min/max over the newest 3 `make bench` runs, targets met -> benchmarks/results/summary-<date>.md
	$(PY) benchmarks/summarize.py $(RUNS)

# How each DAG stage's time and peak memory grow with cells (issue 15): every stage of dvc.yaml on the embedded
# census at several sizes in throw-away workspaces, fitted and extrapolated to the paper's census (docs/bench.md).
# ~30 min on 2 cores; BENCH_SCALE_ARGS="--quick" for a smoke run, "--sizes x1,x2 --stages pca" for a subset.
BENCH_SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale: venv  ## scale curve: time and peak memory (summed PSS) per stage vs cells -> benchmarks/results/scale-<date>.md/.csv/.png
	$(PY) benchmarks/scale.py $(BENCH_SCALE_ARGS)

# Whether an evaluating process's memory grows with the cells it sees or reaches a steady state (docs/bench.md):
# repeated validation passes, RSS and glibc's heap (held / free / in use) after each. BENCH_HEAP_ARGS="--model
# models/sctab --store data/store" for a trained folder; default: the bench's 19,331-gene TabNet.
bench-heap: venv  ## memory of repeated evaluation passes: live data vs freed memory the heap keeps
	$(PY) benchmarks/eval_heap.py $(BENCH_HEAP_ARGS)

# Real labelled cells that packages ship (scRT, pbmc68k_reduced, ...) through the reference route, as a user runs
# it: `sctab params --profile reference --input <set>.h5ad` + `dvc repro evaluate` in throw-away workspaces, every
# model's test macro F1 over seeds and the validation curves (issue 28; docs/references.md). ~1 h for 3 sets x 3
# seeds on 2 cores; BENCH_REFS_ARGS="--sets pbmc68k --seeds 1" for one set, "--cells 500 0" for subsampled sizes.
BENCH_REFS_ARGS ?=
.PHONY: bench-references
bench-references: venv  ## real-data reference suite: test F1 per model, mean ± sd over seeds -> benchmarks/results/references-<date>.md/.json/.png
	$(PY) benchmarks/references.py $(BENCH_REFS_ARGS)

clean:  ## remove pipeline outputs (not the venv, not the DVC cache)
	rm -rf data reports/validation reports/evaluate/report models ray_results

# A bare GPU machine (own Python 3.12 + CUDA torch, no network, 64 MiB per copy; docs/gpu.md): `make gpu-pack`
# here writes .whl/part-NN (the wheels the GPU suite needs and the image lacks); on the GPU machine, one copy per
# part, each running `make gpu-check`: it stages the part, and once every part is there installs the wheels and
# runs the GPU suite and the device bench rows into benchmarks/results/gpu-<date>-<time>/ (and $OUT).
.PHONY: gpu-pack gpu-check
gpu-pack: venv  ## here: the GPU suite's wheels for CPython 3.12 in .whl/part-NN folders of <= 56 MiB
	$(PY) -m sctab.bench.gpu_check pack

gpu-check:  ## on the GPU machine (its python3): stage this copy's part; when all are there, install and run
	PYTHONPATH=src python3 -m sctab.bench.gpu_check stage
	PYTHONPATH=src python3 -m sctab.bench.gpu_check install && PYTHONPATH=src python3 -m sctab.bench.gpu_check run
