# Two commands for a fresh clone: `make demo` and `make test`. Both build what they need first:
# Debian packages (when missing and running as root), the .venv, and the asset caches in .cache/.
SHELL := /bin/bash
.DEFAULT_GOAL := demo

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export HGM_CACHE_DIR := $(CURDIR)/.cache
export ANNY_CACHE_DIR := $(HGM_CACHE_DIR)/anny
export WARP_CACHE_PATH := $(HGM_CACHE_DIR)/warp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# libusb: open3d's import needs it. opencv-doc: real photos for tests. blender-data: CC0 HDRIs for lighting.
# chromium: headless browser that tests `hgm view`'s page (driven over the DevTools protocol, no driver).
APT_PACKAGES := libusb-1.0-0 opencv-doc blender-data chromium
PYTEST_ARGS ?=

.PHONY: demo test test-all bench lint setup apt clean-venv

WEB := $(HGM_CACHE_DIR)/web

setup: apt $(VENV)/.installed $(HGM_CACHE_DIR)/.assets $(WEB)/.installed

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "== apt-get install$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	else \
	  echo "!! missing Debian packages:$$missing -- run: sudo apt-get install$$missing"; \
	  echo "!! (open3d will not import without libusb-1.0-0; photo/HDRI tests will skip)"; \
	fi

# torch first and then as a constraint: any looser torch requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c .ci/constraints.txt -e '.[all]'
	@# mediapipe 0.10.14 declares jax/jaxlib, which its legacy solutions API never imports.
	$(BIN)/pip install -q --no-deps mediapipe==0.10.14
	@touch $@

# The page of `hgm view`: three.js and Spark from the npm registry, at the versions the lock file pins,
# into the cache (never committed); the server serves them under /vendor/.
$(WEB)/.installed: hgm_view/web/package.json hgm_view/web/package-lock.json
	@if ! command -v npm >/dev/null; then echo "!! npm missing: hgm view's page cannot load (install nodejs + npm)"; exit 0; fi; \
	mkdir -p $(WEB) && cp hgm_view/web/package.json hgm_view/web/package-lock.json $(WEB)/ && \
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error >/dev/null && touch .installed

$(HGM_CACHE_DIR)/.assets: $(VENV)/.installed
	$(BIN)/hgm setup
	@touch $@

demo: setup
	$(BIN)/hgm demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

bench: setup
	@mkdir -p bench/results
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

# Pyflakes-level checks (unused/undefined names, syntax): the ones that catch real bugs.
lint: setup
	$(BIN)/python -m ruff check --select F,E9 hgm_core hgm_node hgm_demo hgm_view bench tests launch

clean-venv:
	rm -rf $(VENV) $(HGM_CACHE_DIR)/.assets
