# The two commands of README.rst: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/cwm/etcd/etcdrpc/*.proto)

.PHONY: run test install protos unit integration containers container-images container-tools typecheck bench clean redis-server docker-compose

# The integration tests start a real redis-server (Debian's package) on a
# random loopback port; installed here when missing, as root on CI.
REDIS_SERVER := $(shell command -v redis-server 2>/dev/null)
redis-server:
ifeq ($(REDIS_SERVER),)
	(apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1 || \
	 (apt-get update >/dev/null && apt-get install -y --no-install-recommends redis-server >/dev/null))
	command -v redis-server
endif

# tests/integration/test_compose_files.py validates every docker/**/docker-compose.yaml
# with `docker-compose config`, which needs no Docker engine: Debian's docker-compose
# (1.29), installed here when missing.
DOCKER_COMPOSE := $(shell command -v docker-compose 2>/dev/null)
docker-compose:
ifeq ($(DOCKER_COMPOSE),)
	(apt-get install -y --no-install-recommends docker-compose >/dev/null 2>&1 || \
	 (apt-get update >/dev/null && apt-get install -y --no-install-recommends docker-compose >/dev/null))
	command -v docker-compose
endif

# tests/containers runs docker/'s compose files in containers, with podman as the
# Docker engine (docker/podman/): Debian's podman, runc and netavark, and mmdebstrap
# for the base image, installed here when missing. `docker` (the CLI) and
# docker-compose talk to podman's Docker API.
CONTAINER_PACKAGES := podman runc conmon netavark aardvark-dns iptables mmdebstrap
CONTAINER_TOOLS := $(shell command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null && command -v iptables >/dev/null && test -x /usr/lib/podman/netavark && test -x /usr/lib/podman/aardvark-dns && echo yes)
container-tools: docker-compose
ifeq ($(CONTAINER_TOOLS),)
	(apt-get install -y --no-install-recommends $(CONTAINER_PACKAGES) >/dev/null 2>&1 || \
	 (apt-get update >/dev/null && apt-get install -y --no-install-recommends $(CONTAINER_PACKAGES) >/dev/null))
	for tool in podman runc mmdebstrap iptables; do command -v $$tool >/dev/null || exit 1; done
	test -x /usr/lib/podman/netavark && test -x /usr/lib/podman/aardvark-dns
endif

# The editable install's build_py already compiles protos/ in place; the explicit
# protos/generate.py run makes sure of it whatever pip and setuptools decide.
$(STAMP): setup.py pyproject.toml protos/generate.py $(PROTOS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python protos/generate.py
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

install: $(STAMP)

# Regenerate cwm/etcd/etcdrpc/ after editing protos/ (make install does it too).
protos: $(STAMP)
	$(BIN)/python protos/generate.py

run: $(STAMP)
	mkdir -p data
	$(BIN)/twistd --pidfile= -n cwm --listen tcp:8000 \
		--webhooks examples/webhooks.json --connections examples/connections.json

# The container group runs after the rest: it builds the images (cached in .cache/).
test: $(STAMP) redis-server docker-compose container-tools
	$(BIN)/python -m mypy cwm
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest tests/containers --durations=0

# The images the compose files name, built here (docker/podman/images.sh).
container-images: $(STAMP) container-tools
	bash docker/podman/images.sh all

containers: $(STAMP) redis-server docker-compose container-tools
	$(BIN)/python -m pytest tests/containers --durations=0

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP) redis-server docker-compose
	$(BIN)/python -m pytest tests/integration

typecheck: $(STAMP)
	$(BIN)/python -m mypy cwm

bench: $(STAMP)
	bash bench/run.sh

clean:
	rm -rf $(VENV) build *.egg-info
	find cwm/etcd/etcdrpc -name '*_pb2*' -delete
