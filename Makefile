# vitkit developer and demo targets. `make demo` and `make test` are the two Quick start commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# PyTorch: without an NVIDIA GPU (no nvidia-smi), its CPU-only build first (a few hundred MB instead of several GB),
# from PyTorch's own index; where that index cannot be reached, the default index. TORCH_INDEX= (empty) skips it.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
DEMO_STAMP := $(shell date +%Y%m%d-%H%M%S)
DEMO_RUN ?= runs/demo-$(DEMO_STAMP)

.PHONY: install demo test fashion-mnist clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@$(if $(TORCH_INDEX),if $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/torch/', timeout=15)" \
	  2>/dev/null; then echo "PyTorch's CPU-only build from $(TORCH_INDEX)"; $(PIP) install -q torch --index-url \
	  $(TORCH_INDEX); else echo "$(TORCH_INDEX) cannot be reached: PyTorch comes from the default index"; fi,)
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST: Debian's package where apt is available (root or sudo), else vitkit downloads the official files.
fashion-mnist:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null && apt-cache show dataset-fashion-mnist >/dev/null 2>&1 && \
	     { [ "$$(id -u)" = 0 ] && apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	       sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null; } 2>/dev/null; then \
	  echo "Fashion-MNIST: installed Debian's dataset-fashion-mnist"; \
	else echo "Fashion-MNIST: not packaged here; vitkit will download the official files"; fi

demo: install fashion-mnist
	$(VENV)/bin/vitkit train --config configs/demo.yaml --out $(dir $(DEMO_RUN)) --name $(notdir $(DEMO_RUN))
	$(VENV)/bin/vitkit evaluate $(DEMO_RUN)/best.safetensors fashion-mnist --split test --tta flip
	@echo "Run directory: $(DEMO_RUN)"

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
