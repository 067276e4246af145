# Kubeloop developer commands. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := operator,serving,trainer,cloud,devcluster,dev
# Re-install when the project's metadata changes.
SETUP_STAMP := $(VENV)/.setup-$(shell cat pyproject.toml constraints.txt 2>/dev/null | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(SETUP_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(wildcard constraints.txt),-c constraints.txt) -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.setup-*
	touch $@

.PHONY: setup
setup: $(SETUP_STAMP) ## Create .venv and install Kubeloop (editable) with every extra and the dev tools.

.PHONY: lint
lint: setup ## ruff (lint, format), no function over 60 lines, shellcheck on every tracked shell script.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python hack/check_units.py
	command -v shellcheck >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck)
	git ls-files -z 'hack/*.sh' .ci/run | xargs -0 shellcheck -x

.PHONY: fmt
fmt: setup ## Format and auto-fix with ruff.
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: typecheck
typecheck: setup ## Type-check with mypy (strict).
	$(BIN)/mypy

.PHONY: crds
crds: setup ## Regenerate crds/ from the typed API models.
	$(BIN)/python -m kubeloop.api.crdgen crds

.PHONY: verify-crds
verify-crds: setup ## Fail when crds/ differs from what the models generate.
	$(BIN)/python -m kubeloop.api.crdgen --check crds

.PHONY: grpc-stubs
grpc-stubs: setup ## Regenerate the gRPC (Open Inference Protocol v2) Python modules from their .proto.
	$(BIN)/python hack/grpc_stubs.py

.PHONY: verify-grpc-stubs
verify-grpc-stubs: setup ## Fail when the committed gRPC modules differ from what the .proto generates.
	$(BIN)/python hack/grpc_stubs.py --check

.PHONY: dashboards
dashboards: setup ## Regenerate the Grafana dashboards (charts/kubeloop/dashboards/) from their code.
	$(BIN)/python -m kubeloop.operator.dashboards charts/kubeloop/dashboards

.PHONY: verify-dashboards
verify-dashboards: setup ## Fail when charts/kubeloop/dashboards/ differs from what the code generates.
	$(BIN)/python -m kubeloop.operator.dashboards --check charts/kubeloop/dashboards

.PHONY: unit
unit: setup ## Run the unit tests only.
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: fuzz
fuzz: setup ## Run the fuzz tier only: hypothesis and schemathesis against a real kubeloop serve.
	$(BIN)/pytest tests/fuzz $(PYTEST_ARGS)

.PHONY: toolchain
toolchain: ## Build the pinned toolchain (control plane, etcd, kwok, helm, the S3 and GCS test servers) where missing.
	hack/toolchain.sh

.PHONY: storage-tools
storage-tools: ## Build or install the object stores the storage tests start: Versity Gateway (S3), fake-gcs-server (GCS), Azurite (Azure).
	hack/toolchain.sh versitygw fake-gcs-server
	hack/install-azurite.sh

.PHONY: monitoring-tools
monitoring-tools: ## Install Prometheus, promtool and Alertmanager (Debian packages) where missing.
	hack/install-monitoring.sh

.PHONY: postgresql-tools
postgresql-tools: ## Install PostgreSQL's initdb and pg_ctl (Debian package; the SQL-source tests) where missing.
	hack/install-postgresql.sh

.PHONY: chart-tools
chart-tools: ## Install lua5.4 and lua5.1 (Debian packages; the Argo CD health-check tests) where missing.
	command -v lua5.4 >/dev/null && command -v lua5.1 >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua5.4 lua5.1)

.PHONY: browser-tools
browser-tools: ## Install chromium (Debian package; the drift-report tests drive it with Playwright) where missing.
	hack/install-browser.sh

.PHONY: chart
chart: setup ## Copy crds/ and the `kubeloop rules` output into the Helm chart (charts/kubeloop/files/).
	rm -f charts/kubeloop/files/crds/*.yaml
	cp crds/*.yaml charts/kubeloop/files/crds/
	$(BIN)/kubeloop rules > charts/kubeloop/files/rules/kubeloop-rules.yaml

.PHONY: chart-lint
chart-lint: setup toolchain monitoring-tools chart-tools ## helm lint the chart with its default and ci/ values; chart and Argo CD tests without a cluster.
	$(BIN)/pytest tests/component/test_chart_static.py tests/component/test_chart_values.py tests/component/test_argocd_health.py $(PYTEST_ARGS)

.PHONY: images
images: ## Build the operator, trainer and serving images with Docker (hack/images.sh; no registry needed).
	hack/images.sh

.PHONY: demo
demo: setup toolchain monitoring-tools images ## The whole loop on a local cluster with a real node, narrated (root; builds the images).
	$(BIN)/python -m kubeloop.devcluster.demo

.PHONY: demo-down
demo-down: setup ## Stop the demo's cluster, real node and monitoring.
	$(BIN)/python -m kubeloop.devcluster.demo --down

.PHONY: e2e
e2e: setup toolchain monitoring-tools images ## The end-to-end test alone: the whole loop on a real node (root; builds the images).
	$(BIN)/pytest tests/e2e -m e2e $(PYTEST_ARGS)

.PHONY: test
test: setup lint typecheck verify-crds verify-grpc-stubs verify-dashboards toolchain storage-tools monitoring-tools postgresql-tools chart-tools browser-tools images ## Everything CI runs: lint, types, CRDs, dashboards, images and the unit, component, fuzz and cluster tiers.
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: bench-operator
bench-operator: setup toolchain ## Benchmark the operator: 500 ModelDeployments + 200 TrainingJobs on a kwok cluster.
	$(BIN)/python bench/operator/bench_operator.py

.PHONY: bench-rollout
bench-rollout: setup toolchain monitoring-tools ## Benchmark the guard: seconds to roll a bad canary back and to promote a good one, against their bounds.
	$(BIN)/python bench/rollout/bench_rollout.py

.PHONY: bench-canary
bench-canary: setup toolchain ## Benchmark the canary split: share per step vs target over 2,000 requests, and weight propagation, mounted file vs API watch.
	$(BIN)/python bench/canary/bench_canary.py

BENCH_BATCH_ROWS ?= 1000000

.PHONY: bench-batch
bench-batch: setup ## Benchmark kubeloop predict against a bare pyarrow + onnxruntime loop: rows/s on a generated file.
	$(BIN)/python bench/batch/bench_batch.py --rows $(BENCH_BATCH_ROWS)

BENCH_DATA_MB ?= 500
.PHONY: bench-data
bench-data: setup ## Benchmark kubeloop snapshot against a bare streaming read: rows/s, MB/s, peak RSS (BENCH_DATA_MB=2000 for 2 GB).
	$(BIN)/python bench/data/bench_data.py --megabytes $(BENCH_DATA_MB)

BENCH_VENV ?= $(HOME)/.cache/kubeloop/bench-venv
KSERVE_VENV ?= $(HOME)/.cache/kubeloop/kserve-venv
BENCH_SECONDS ?= 10
SKLEARN_PIN = scikit-learn==$$($(BIN)/python -c 'import sklearn; print(sklearn.__version__)')

.PHONY: bench-serving
bench-serving: setup ## Benchmark kubeloop serve vs MLServer 1.7, KServe 0.21 and a bare ASGI+onnxruntime ceiling (wrk), and its REST vs gRPC (ghz).
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	hack/toolchain.sh ghz
	test -x $(BENCH_VENV)/bin/mlserver || ($(PYTHON) -m venv $(BENCH_VENV) && \
	  $(BENCH_VENV)/bin/pip install --quiet "mlserver==1.7.*" "mlserver-sklearn==1.7.*" \
	  "$(SKLEARN_PIN)")
	test -f $(KSERVE_VENV)/.kserve-0.21 || ($(PYTHON) -m venv $(KSERVE_VENV) && \
	  $(KSERVE_VENV)/bin/pip install --quiet "kserve==0.21.*" "$(SKLEARN_PIN)" && \
	  touch $(KSERVE_VENV)/.kserve-0.21)
	KUBELOOP_BENCH_VENV=$(BENCH_VENV) KUBELOOP_KSERVE_VENV=$(KSERVE_VENV) \
	  $(BIN)/python bench/serving/run.py --duration $(BENCH_SECONDS)
	$(BIN)/python bench/serving/protocols.py --duration $(BENCH_SECONDS)
