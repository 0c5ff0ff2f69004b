# e4e-lab: `make demo`, `make test`, `make lab`, `make bench`. Each creates .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.e4e-installed
# Never let a resolver choose another torch: these are installed first and kept by
# constraints.txt (a GPU user gets the same pins from PyPI).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lab bench gpu-wheels clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt widgets/__init__.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PINS)
	$(BIN)/python -m pip install -c constraints.txt -e ".[sam,lab,dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/e4e-lab transfer --model auto --domain bird \
		--appearance example/toy/bird_appearance.png --structure example/toy/bird_structure.png \
		--appearance-mask example/toy/bird_appearance_mask.png \
		--structure-mask example/toy/bird_structure_mask.png --out demo-output --overwrite
	@echo "demo: wrote demo-output/ (result.png, strip.png, ...)"

test: $(STAMP)
	$(BIN)/python -m pytest

# JupyterLab on the notebooks with the widget manager's "save widget state" on, so a saved
# notebook keeps its widgets' state: lab-settings/overrides.json is installed as this
# venv's settings override (its app settings dir, {sys.prefix}/share/jupyter/lab/settings;
# in overrides.d, beside any overrides.json of the environment), never into the user's own
# settings; a choice made in the Settings editor still wins over it.
LAB_SETTINGS := $(abspath $(VENV))/share/jupyter/lab/settings

lab: $(STAMP)
	mkdir -p $(LAB_SETTINGS)/overrides.d
	cp lab-settings/overrides.json $(LAB_SETTINGS)/overrides.d/e4e-lab.json
	$(BIN)/jupyter lab --LabApp.app_settings_dir=$(LAB_SETTINGS) notebooks/

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_matching.py
	$(BIN)/python benchmarks/bench_transfer.py --model tiny --reference-style
	$(BIN)/python benchmarks/bench_explorer_click.py

# Transfer quality in the toy world (benchmarks/QUALITY.md): every method on 50 held-out
# pairs with the trained toy model; writes quality-output/ (quality.csv, grid.png).
.PHONY: quality
quality: $(STAMP)
	$(BIN)/python benchmarks/quality_toy.py --out quality-output

# Wheels the bare GPU machine lacks, for benchmarks/gpu_check.sh: exactly the pins of
# benchmarks/gpu_wheels.txt (Python 3.12, manylinux x86_64), one version each in .whl/.
# pip skips wheels already there; wheels no longer listed are removed.
GPU_WHEEL_LIST := benchmarks/gpu_wheels.txt
GPU_PLATFORMS  := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
                    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))

gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(GPU_PLATFORMS) -d .whl -r $(GPU_WHEEL_LIST)
	$(PYTHON) benchmarks/gpu_check.py --prune-wheels .whl
	@du -sh .whl

clean:
	rm -rf demo-output test-artifacts .pytest_cache
