# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EDITABLE_NOTE := ignore:Editable installation
OUT    ?= demo_out
export TF_USE_LEGACY_KERAS := 1
# TensorFlow's log noise is silenced by the package itself (vistaste/_quiet.py); set TF_CPP_MIN_LOG_LEVEL=1 to see it.

.PHONY: demo test test-e2e test-slow lint bench install clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools (every strategy of an editable install of a package-dir layout) warns that a folder named
	@# like the package (vistaste/) may shadow it; here that folder *is* the package, so that one warning,
	@# matched by its message, is muted: any other warning of the install still shows. (Session 13 checked the
	@# root: setuptools 84 emits it unconditionally on leaving its editable strategy, and recent pip prints it.)
	PYTHONWARNINGS="$(EDITABLE_NOTE)" $(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m vistaste.apps.demo --out $(OUT)

# Two tiers, both run by CI (.ci/run): `make test` is the everyday loop (3–4 minutes on 2 cores);
# `make test-e2e` runs what crosses processes or a whole workflow (the walkthrough notebook, a two-worker
# TensorFlow cluster, the CLI and Pythons in processes of their own, a built wheel): marker `e2e`.
# pytest-xdist runs one worker per core, each test file on one worker (its module fixtures built once), the
# longest files first (tests/conftest.py: LONGEST_FIRST) so none finishes alone at the end.
# The notebook cell limit is generous on purpose: nbmake's 300 s default failed once on a busy machine.
# One thread per TensorFlow/BLAS process: the workers already fill the cores, and each process's own thread
# pool on top oversubscribes them (measured on 2 cores: 6 min 19 s of wall and 11.6 min of CPU, against
# 8 min 11 s and 15.6 min with TensorFlow's default pools).
TEST_THREADS := TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1
# Files in the order collected (longest first), not reordered by xdist.
XDIST := -q -n auto --dist loadfile --no-loadscope-reorder
# Python's bytecode caches are written even where the environment turns them off (PYTHONDONTWRITEBYTECODE): with
# none, every pytest-xdist worker compiles and assertion-rewrites ~300 modules (pytest plugins' and ours) again at
# each run; with them, collecting takes 15.7 s instead of 20.5 s per worker from the second run on. Empty is unset.
test test-e2e: export PYTHONDONTWRITEBYTECODE :=
test: $(STAMP)
	$(BIN)/ruff check .
	$(TEST_THREADS) $(BIN)/python -m pytest $(XDIST) tests

test-e2e: $(STAMP)
	$(TEST_THREADS) $(BIN)/python -m pytest $(XDIST) notebooks/walkthrough.ipynb tests --nbmake --nbmake-timeout=3600 -m e2e

# House rules (pyproject's [tool.ruff]) alone; `make test` runs the same check before pytest.
lint: $(STAMP)
	$(BIN)/ruff check .

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(OUT) build dist *.egg-info

bench: $(STAMP)
	PYTHONWARNINGS="$(EDITABLE_NOTE)" $(BIN)/python -m pip install --quiet -e ".[bench]"  # faiss-cpu, for benchmarks/ann.py
	test -d $(OUT)/world || $(MAKE) demo
	$(BIN)/python benchmarks/embed_throughput.py --items 2000
	$(BIN)/python benchmarks/train_throughput.py --data $(OUT)/world
	$(BIN)/python benchmarks/rerank_tradeoff.py --model $(OUT)/models/two-tower --data $(OUT)/world
	$(BIN)/python benchmarks/http_latency.py --models $(OUT)/exported --rate 100 --seconds 20
	$(BIN)/python benchmarks/ann.py --sizes 10000 100000 1000000
	$(BIN)/python benchmarks/overload.py --models $(OUT)/exported --seconds 60 --factor 3
	$(BIN)/python benchmarks/durability.py --runs 10 --writers 4 --seconds 3
	$(BIN)/python benchmarks/startup.py --models $(OUT)/exported --workers 1 2
