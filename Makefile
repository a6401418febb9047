# Two commands: `make demo` and `make test`. Both run the idempotent set-up first.
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: setup demo serve test test-unit test-integration train lint perf soak proto docs audit clean

setup:
	@bash scripts/setup.sh

## Train on MovieLens-100K, export, start Triton + Kafka + gateway, show recommendations, stop.
demo: setup
	$(PY) -m stack.demo

## Keep the whole stack up for manual use (Ctrl-C stops it).
serve: setup
	$(PY) -m stack.demo --serve

## Train + evaluate + export only.
train: setup
	$(PY) -m export --dataset ml-100k --repository model_repository --artifacts build

test: setup
	RECSYS_REQUIRE_SERVICES=1 $(PY) -m pytest

test-unit: setup
	$(PY) -m pytest tests/unit

test-integration: setup
	RECSYS_REQUIRE_SERVICES=1 $(PY) -m pytest tests/integration

## perf_analyzer suite against a real Triton (writes perf/results/).
perf: setup
	$(PY) perf/triton_perf.py --out perf/results

## Soak: the whole stack 10 min under steady load, Kafka and Redis restarted mid-run (perf/results/soak/); SOAK_ARGS="--duration-s 120" for a short one.
soak: setup
	$(PY) perf/soak.py $(SOAK_ARGS)

lint: setup
	.venv/bin/ruff check .

## Regenerate the gRPC modules in gateway/proto/ from recsys.proto (package-qualified imports).
proto: setup
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. gateway/proto/recsys.proto

## Regenerate docs/settings.md from the settings classes (tests fail when it is stale).
docs: setup
	$(PY) scripts/settings_reference.py

## Dependency audit (pip-audit on the venv): fails on a known vulnerability that has a fixed version.
audit: setup
	$(PY) scripts/audit.py $(AUDIT_ARGS)

clean:
	rm -rf build .pytest_cache
	find model_repository -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
