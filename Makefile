# Two entry points for a newcomer:  `make demo`  and  `make test`.
# Both create the virtual environment on first use. CPU torch is installed first from its own
# requirement so pip never pulls a CUDA build; GPU users pass their own, e.g.
#   make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test demo-data clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[train,test]"
	touch $@

demo-data: $(VENV)/.installed
	$(BIN)/python manifests/make_demo_audio.py

demo: demo-data
	$(BIN)/nestkit validate-manifest manifests/demo/train.json manifests/demo/validation.json --noise manifests/demo/noise.json
	$(BIN)/nestkit train manifests/demo/config.yaml --resume --fresh
	@echo "the learning curve as a figure: $(BIN)/python tools/plot_demo_curve.py (writes runs/nest-demo/learning_curve.png)"

test: $(VENV)/.installed
	$(BIN)/python -m pytest

clean-demo:
	rm -rf manifests/demo/audio manifests/demo/noise runs/nest-demo
