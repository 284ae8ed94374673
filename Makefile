# OmniRelay developer entry points. The README opens with `make run-demo` and `make test`;
# .ci/run calls `make test` on a fresh machine, so `setup` installs everything it needs.
#
# Every target is idempotent: a second `make setup` only re-checks the system packages
# (dpkg -s, well under a second) unless setup.py, pyproject.toml or a Cython source changed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# System packages: a compiler for the Cython core and libnghttp2-dev for its HTTP/2 codec; curl
# for the demo and the HTTP/2 tests; nginx (Debian 12's, built with the http_v2 and grpc
# modules) + wrk for the end-to-end benchmarks and the tests that compare against nginx;
# nghttp2-client for h2load (HTTP/2 load in tests and bench/e2e/h2.py); prometheus for the
# test in which a real Prometheus server scrapes the admin API's /metrics (the test runs its
# own server on a free port; on a machine with systemd, Debian also enables its service);
# clang, lld, wasi-libc and compiler-rt's wasm32 builtins to build the C test plugins of the
# Wasm host (tests/extensions: clang --target=wasm32-wasi); etcd for MeshKit's HA store tests
# (the tests start their own etcd on free ports); node and npm to build the test filter written
# against the AssemblyScript Proxy-Wasm SDK (skipped when an npm is already on the PATH, e.g.
# NodeSource's nodejs, which conflicts with Debian's npm package).
APT_PACKAGES ?= build-essential curl libnghttp2-dev nghttp2-client nginx wrk prometheus \
	clang lld wasi-libc libclang-rt-14-dev-wasm32 etcd-server etcd-client nodejs npm
# Only for `make wheel` / `make wheel-test` (never installed by `make test`): the aarch64 cross
# compiler, Debian's Python 3.11 headers and libnghttp2 for both architectures (arm64 ones via
# multiarch: wheel-sysdeps adds the arm64 dpkg architecture), and qemu-user to run the aarch64
# wheel. See wheels/README.md.
WHEEL_APT_PACKAGES ?= gcc-aarch64-linux-gnu libc6-dev-arm64-cross libpython3.11-dev \
	libpython3.11-dev:arm64 libnghttp2-dev:arm64 qemu-user-static
PYTEST_ARGS ?=
BENCH_E2E_ARGS ?=
LINT_PATHS := $(wildcard omnirelay omnirelay_core meshkit tests bench)
PROTO_OUT := omnirelay/config/protos

# The editable install compiles every .pyx; rebuild when any Cython source, or the set of
# them, changes (SOURCES_LIST is rewritten only when a file is added or removed).
CORE_SOURCES := $(sort $(shell find omnirelay_core \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) 2>/dev/null))
STAMP := $(VENV)/.omnirelay-setup.stamp
SOURCES_LIST := $(VENV)/.omnirelay-core-sources

.PHONY: help setup sysdeps test bench bench-micro bench-e2e run-demo lint wheel wheel-sysdeps \
	wheel-test protos clean distclean FORCE

help:
	@echo "make setup      system packages (apt, as root), $(VENV), editable install + Cython build"
	@echo "make test       run the test suite (pytest -q; slow tests excluded)"
	@echo "make bench      micro benchmarks (pytest-benchmark) + end-to-end wrk run vs nginx/aiohttp"
	@echo "make run-demo   start a demo upstream and an edge proxy"
	@echo "make lint       ruff check"
	@echo "make wheel      sdist + manylinux wheels for x86_64 and aarch64 into dist/ (wheels/README.md)"
	@echo "make wheel-test build them if stale, then install and smoke-test each (aarch64 under qemu)"
	@echo "make protos     generate omnirelay.config.protos from protos/*.proto (grpcio-tools)"
	@echo "make clean      remove build outputs and the setup stamp; distclean also removes $(VENV)"

setup: $(STAMP)

# Checked on every run (cheap); apt-get runs only when a package is missing.
# `pkg:<native arch>` too: `dpkg -s pkg` calls a package installed for two architectures (e.g.
# libnghttp2-dev beside the arm64 one `make wheel` installs) ambiguous.
sysdeps:
	@missing=""; \
	native=$$(dpkg --print-architecture 2>/dev/null || true); \
	for p in $(APT_PACKAGES); do \
	  case "$$p" in nginx|nginx-light|nginx-*) \
	    if { command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null 2>&1; then continue; fi;; \
	  nodejs|npm) \
	    if command -v npm >/dev/null 2>&1; then continue; fi;; \
	  esac; \
	  dpkg -s "$$p" >/dev/null 2>&1 || dpkg -s "$$p:$$native" >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "setup: no dpkg/apt-get here; install these yourself:$$missing" >&2; exit 0; \
	fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "setup: not root, skipping apt-get; missing system packages:$$missing" >&2; \
	  echo "setup: run as root: apt-get update && apt-get install -y$$missing" >&2; exit 0; \
	fi; \
	echo "setup: installing system packages:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -q; \
	apt-get install -y -q --no-install-recommends $$missing

$(SOURCES_LIST): FORCE
	@mkdir -p $(VENV)
	@echo '$(CORE_SOURCES)' | cmp -s - $@ || echo '$(CORE_SOURCES)' > $@

$(STAMP): setup.py pyproject.toml $(CORE_SOURCES) $(SOURCES_LIST) | sysdeps
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "setup: $(PYTHON) is $$($(PYTHON) -V 2>&1); Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }
	@if ! $(PY) -c 'import pip' >/dev/null 2>&1; then \
	  echo "setup: creating $(VENV) with $$($(PYTHON) -V 2>&1)"; \
	  $(PYTHON) -m venv --clear $(VENV); \
	  echo '$(CORE_SOURCES)' > $(SOURCES_LIST); \
	fi
	$(PIP) install -q --disable-pip-version-check --upgrade pip
	$(PIP) install --disable-pip-version-check -e '.[test]'
	@touch $@

test: setup
	@rc=0; $(PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -ne 0 ]; then echo "make test: pytest exited with status $$rc" >&2; fi; \
	exit $$rc

bench: bench-micro bench-e2e

bench-micro: setup
	$(PY) -m pytest bench/micro --benchmark-only -q

bench-e2e: setup
	$(PY) bench/e2e/run.py $(BENCH_E2E_ARGS)

run-demo: setup
	$(VENV)/bin/omnirelay run --demo

lint: setup
	$(PY) -m ruff check $(LINT_PATHS)

wheel-sysdeps:
	@if command -v dpkg >/dev/null 2>&1 && ! dpkg --print-foreign-architectures | grep -qx arm64; then \
	  if [ "$$(id -u)" != 0 ]; then echo "wheel: run as root: dpkg --add-architecture arm64" >&2; exit 1; fi; \
	  echo "wheel: adding the arm64 dpkg architecture (multiarch)"; dpkg --add-architecture arm64; \
	fi
	@$(MAKE) --no-print-directory sysdeps APT_PACKAGES="$(WHEEL_APT_PACKAGES)"

wheel: wheel-sysdeps
	PYTHON=$(PYTHON) bash wheels/build.sh

# Slow (minutes): rebuilds dist/ only when a source is newer than it, then runs the tests
# marked slow in tests/test_wheels.py (not part of `make test`).
wheel-test: setup wheel-sysdeps
	PYTHON=$(PYTHON) bash wheels/build.sh --if-stale
	$(PY) -m pytest -q -p no:cacheprovider -m slow tests/test_wheels.py $(PYTEST_ARGS)

# protos/*.proto -> $(PROTO_OUT)/*_pb2{,_grpc}.py{,i} with grpcio-tools. The generated modules
# are build output (git-ignored, never edited): importing omnirelay.config.protos in a checkout
# also rebuilds them when missing or stale. `make protos FORCE_PROTOS=1` rebuilds regardless.
protos:
	@$(PY) -c 'import grpc_tools' 2>/dev/null || \
	  { echo "protos: grpc_tools missing; run make setup (or $(PIP) install grpcio-tools)" >&2; exit 1; }
	$(PY) $(PROTO_OUT)/_build.py $(if $(FORCE_PROTOS),--force)

clean:
	rm -rf build dist *.egg-info
	@shopt -s globstar nullglob; \
	for pyx in omnirelay_core/**/*.pyx; do rm -f "$${pyx%.pyx}.c" "$${pyx%.pyx}.cpp" "$${pyx%.pyx}.html"; done; \
	find omnirelay_core -name '*.so' -delete
	rm -f $(STAMP) $(SOURCES_LIST)

distclean: clean
	rm -rf $(VENV)

FORCE:
