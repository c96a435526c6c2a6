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
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# prune (FORCE, 99% sparse) -> train -> eval -> inspect, on scikit-learn's bundled digits: no download;
# then the same network trained dense (sparsity 0), so the last line compares the two.
demo: install
	mkdir -p $(OUT)
	$(BIN)/force prune --model lenet300 --dataset digits --sparsity 0.99 --method force --steps 60 \
		-o $(OUT)/lenet300-digits.safetensors --overwrite
	$(BIN)/force train $(OUT)/lenet300-digits.safetensors -o $(OUT)/lenet300-digits-trained.safetensors \
		--log-file $(OUT)/train.jsonl --overwrite
	$(BIN)/force eval $(OUT)/lenet300-digits-trained.safetensors
	$(BIN)/force inspect $(OUT)/lenet300-digits-trained.safetensors
	$(BIN)/force prune --model lenet300 --dataset digits --sparsity 0 --method magnitude \
		-o $(OUT)/lenet300-digits-dense.safetensors --overwrite --quiet
	$(BIN)/force train $(OUT)/lenet300-digits-dense.safetensors -o $(OUT)/lenet300-digits-dense-trained.safetensors \
		--overwrite --quiet
	$(BIN)/force eval $(OUT)/lenet300-digits-trained.safetensors --json --quiet > $(OUT)/eval-pruned.json
	$(BIN)/force eval $(OUT)/lenet300-digits-dense-trained.safetensors --json --quiet > $(OUT)/eval-dense.json
	@$(BIN)/python -c 'import json, sys; p, d = (json.load(open(f)) for f in sys.argv[1:]); \
		print("digits test accuracy: FORCE at 99%% sparsity %.2f%% (%.2f%% of the weights), dense network %.2f%%" \
		      % (100 * p["top1"], 100 * p["density"], 100 * d["top1"]))' $(OUT)/eval-pruned.json $(OUT)/eval-dense.json

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/prune_speed.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/data_speed.py
	$(BIN)/python benchmarks/train_vs_pytorch.py

clean:
	rm -rf $(OUT) .pytest_cache
