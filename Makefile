# e4e-lab: `make demo`, `make test`, `make lab`, `make bench`. Each creates .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.e4e-installed
# Never let a resolver choose another torch: these are installed first and kept by
# constraints.txt (a GPU user gets the same pins from PyPI).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lab bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt widgets/__init__.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PINS)
	$(BIN)/python -m pip install -c constraints.txt -e ".[sam,lab,dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/e4e-lab transfer --model auto \
		--appearance example/chelsea_cat.png --structure example/horse_silhouette.png \
		--boxes example/boxes.json --domain animal --out demo-output --overwrite
	@echo "demo: wrote demo-output/ (result.png, strip.png, ...)"

test: $(STAMP)
	$(BIN)/python -m pytest

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_matching.py
	$(BIN)/python benchmarks/bench_transfer.py --model tiny --reference-style
	$(BIN)/python benchmarks/bench_explorer_click.py

clean:
	rm -rf demo-output test-artifacts .pytest_cache
