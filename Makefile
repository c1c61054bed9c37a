# kube-vgpu: every entry point a developer or CI needs. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv protos protos-check k8s-protos build controlplane lint test test-fast pytest run bench clean constraints

all: build

$(STAMP): pyproject.toml sim/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' -e ./sim
	touch $(STAMP)

venv: $(STAMP)

# Regenerates the committed stubs under gen/python from protos/ (grpcio-tools + mypy-protobuf).
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

protos-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

# Regenerates kube-local's committed Kubernetes protobuf schema (sim/kubelocal/pb/k8s.binpb, k8s_json.json)
# from the k8s.io/api and k8s.io/apimachinery that sim/controlplane/go.mod pins (Go module cache: needs Go).
# `make build` does not: the files are committed; tests/kubelocal/test_protobuf_schema.py checks them.
k8s-protos: $(STAMP)
	$(BIN)/python scripts/gen_k8s_protos.py

build: $(STAMP) protos-check
	@if [ -f libvgpu/Makefile ]; then $(MAKE) -C libvgpu; fi

# The upstream control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) built from
# Kubernetes' own Go modules pinned in sim/controlplane/go.mod, into a cache keyed by go.mod+go.sum and the
# Go version: the first build takes a while (see README), later ones are free.
controlplane:
	$(PYTHON) sim/controlplane/build.py >/dev/null

lint: $(STAMP)
	$(BIN)/ruff check services sim tests scripts bench
	$(BIN)/ruff format --check services sim tests scripts bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd $(CURDIR) && PATH=$(CURDIR)/$(BIN):$$PATH buf lint

pytest: build controlplane
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

test: build lint pytest

# The fast lane: pure logic, kube-local and contracts; whole processes, deploy renders and libvgpu builds
# (marked slow by tests/conftest.py) are left out.
test-fast: build
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Local mode: kube-local with the simulated cluster of deploy/local/cluster.yaml, every component as its own
# process, and the demo pods of deploy/local/demo-pods.yaml taken through the whole path.
run: build
	$(BIN)/kube-vgpu-local up --cluster deploy/local/cluster.yaml --demo deploy/local/demo-pods.yaml $(RUN_ARGS)

# Benchmarks print their figures; they assert nothing and are not part of `make test`.
bench: build
	@for b in bench/*_bench.py bench/*/*_bench.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

constraints: $(STAMP)
	{ echo "# Exact pins for every runtime and development dependency (pip install -c constraints.txt)."; \
	  echo "# Regenerate with: make constraints"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^pip=='; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
	@if [ -f libvgpu/Makefile ]; then $(MAKE) -C libvgpu clean; fi
