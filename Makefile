# LoopTool — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/looptool/v1/*.proto)

.PHONY: setup proto proto-check crd demo cluster-demo test test-fast bench lint clean lock image image-test

$(STAMP): pyproject.toml locks/cpu.txt .ci/system-deps.sh
	bash .ci/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c locks/cpu.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# Generate looptool/v1/*_pb2*.py from protos/ (committed; tests check they are in sync).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	@true

# Regenerate the CRDs and the Grafana dashboard from the code (tests fail when they are stale).
crd: $(STAMP)
	$(PY) -m looptool.operators.crd --write
	$(PY) -m looptool.operators.dashboard --write

proto-check: $(STAMP)
	$(PY) -m pytest -q tests/repo/test_proto_sync.py

demo: $(STAMP)
	$(VENV)/bin/looptool run examples/demo.yaml

# The Kubernetes path on one machine: kubectl against the fake API, the chart's services and operator as
# local processes, SeaweedFS, a local kubelet for the trainer Jobs (tests/support/cluster_box.py).
cluster-demo: $(STAMP)
	$(PY) tests/support/cluster_box.py

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -x --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not image" tests

# The CPU image <chart image.repository>:<chart appVersion> (images/Containerfile) with Debian's
# buildah and podman, from a Debian base made by mmdebstrap: no container registry needed. Rebuilt
# only when its inputs change. GPU images: see images/Containerfile.gpu-* and docs/kubernetes.md.
image:
	bash images/deps.sh
	$(PYTHON) images/build.py

# Builds (or reuses) the CPU image, runs toolsim in it with podman and the cluster box's trainer Job
# in it (minutes; .ci/run runs it).
image-test: $(STAMP) image
	$(PY) -m pytest -q -p no:cacheprovider -m image tests/deploy/test_image.py tests/deploy/test_cluster_box_podman.py

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Exact GPU locks (locks/gpu-inference.txt, locks/gpu-trainer.txt) from pyproject's ranges with uv's
# resolver, in a tools venv of its own (needs PyPI). The CPU lock is `pip freeze` of $(VENV).
LOCK_VENV := build/lock-venv
lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q uv==0.13.8 "packaging>=24"; }
	$(LOCK_VENV)/bin/python locks/lock.py --uv $(LOCK_VENV)/bin/uv

clean:
	rm -rf $(VENV) .looptool build *.egg-info
