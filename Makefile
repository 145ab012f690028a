# aerosplat: `make demo` runs the sample scene end to end, `make test` runs the tests.
# Both go through `make install`, which is idempotent: a .venv/ in the checkout
# (plus the Debian packages system libraries need, when missing).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed
# Debian packages for what the wheels do not bundle: libusb for open3d (meshes); GDAL's tools,
# QGIS's Python bindings and Chromium, the real clients the products and the report are opened in.
APT_PACKAGES := libusb-1.0-0 gdal-bin python3-qgis qgis-providers chromium

.PHONY: install demo test test-fast lint clean-results

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "aerosplat needs Python >= 3.11 (snakemake 9)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the pinned CPU build: any other route pulls gigabytes of CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,workflow]'
	touch $(STAMP)

demo: install
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default
	$(BIN)/python -m aerosplat.summary results/sample

test: install
	$(BIN)/python -m pytest -v --durations=0 --durations-min=5

test-fast: install
	$(BIN)/python -m pytest -v -m "not slow"

lint: install
	$(BIN)/snakemake --lint

clean-results:
	rm -rf results logs benchmarks .snakemake
