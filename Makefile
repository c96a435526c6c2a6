# Two entry points on a fresh machine: `make demo` (the main job, offline, on digits) and `make test`.
# Each creates the virtual environment .venv when there is none.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
OUT ?= demo-out

.PHONY: install demo test bench clean

install: $(BIN)/force

$(BIN)/force: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# prune (FORCE, 99% sparse) -> train -> eval -> inspect, on scikit-learn's bundled digits: no download.
demo: install
	mkdir -p $(OUT)
	$(BIN)/force prune --model lenet300 --dataset digits --sparsity 0.99 --method force --steps 60 \
		-o $(OUT)/lenet300-digits.safetensors --overwrite
	$(BIN)/force train $(OUT)/lenet300-digits.safetensors -o $(OUT)/lenet300-digits-trained.safetensors \
		--log $(OUT)/train.jsonl --overwrite
	$(BIN)/force eval $(OUT)/lenet300-digits-trained.safetensors
	$(BIN)/force inspect $(OUT)/lenet300-digits-trained.safetensors

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/prune_speed.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/data_speed.py

clean:
	rm -rf $(OUT) .pytest_cache
