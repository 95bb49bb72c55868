PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu-check lint clean

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/batchlab advise --out demo-out

# Two test processes: a CI machine has two cores, and each test keeps torch to one thread.
test: lint
	$(BIN)/python -m pytest -n 2

# The layers (pyproject's [tool.importlinter]): an upward import or a cycle fails here.
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/lint-imports

bench: $(STAMP)
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# Every CUDA path, with Lightning's and Accelerate's finders beside it. On a GPU machine whose
# python3 already holds torch and the rest (nothing can be fetched there), that python3 runs it;
# elsewhere the venv does, with the [peers] extra where CUDA is. Without CUDA: one line, exit 0.
gpu-check:
	@if python3 -c "import torch, typer, rich, sklearn, matplotlib" 2>/dev/null; then \
		PYTHONPATH=src python3 bench/gpu_check.py; \
	else \
		$(MAKE) -s $(STAMP); \
		if $(BIN)/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
			$(BIN)/python -m pip install -q -e '.[peers]' || echo "gpu-check: peers not installed"; \
		fi; \
		$(BIN)/python bench/gpu_check.py; \
	fi

clean:
	rm -rf $(VENV) demo-out .pytest_cache
