# Two commands: `make demo` and `make test`. Both create .venv and install everything on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.zoomfeat-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench notebooks docs clean

$(STAMP): pyproject.toml tools/install_deps.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch + torchvision as a matching pair first, then zoomfeat[dev] (editable); with uv where `pip install uv`
	# works (≈ 6× faster than pip), else pip; ZOOMFEAT_INSTALLER=pip forces pip (tools/install_deps.py)
	$(BIN)/python tools/install_deps.py
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=offline $(BIN)/zoomfeat demo --out demo_out

# pytest-xdist: one pytest worker per usable core (XDIST=0 runs in one process), one torch / BLAS thread each
XDIST   ?= $(shell $(PY) -c "import os; print(len(os.sched_getaffinity(0)))" 2>/dev/null || echo 2)
TEST_ENV := WANDB_MODE=disabled OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -m "not slow" $(if $(filter-out 0 1,$(XDIST)),-n $(XDIST) --dist loadfile) $(PYTEST_ARGS)

test-all: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest $(if $(filter-out 0 1,$(XDIST)),-n $(XDIST) --dist loadfile) $(PYTEST_ARGS)

notebooks: $(STAMP)
	cd notebooks && ZOOMFEAT_NB_THREADS=1 WANDB_MODE=disabled ../$(BIN)/jupyter execute --inplace *.ipynb

docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d site

# every benchmark once (docs/performance.md); gpu.py runs its CPU smoke variant where there is no CUDA device, and
# compare_jobs.py times the demo's comparison when demo_out/ exists (else synthetic bags of the demo's shape)
bench: $(STAMP)
	set -e; for f in benchmarks/*.py; do echo "== $$f"; case $$f in \
	  */gpu.py) if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	      $(BIN)/python $$f --out runs/bench/gpu; else $(BIN)/python $$f --smoke --out runs/bench/gpu_smoke; fi ;; \
	  *) $(BIN)/python $$f ;; \
	esac; done

clean:
	rm -rf $(VENV) demo_out .pytest_cache
