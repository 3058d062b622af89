# Ratatoskr: every target works on a fresh machine. Installs come from uv.lock (the same versions on
# every machine); the venv, the stubs and the default model are prepared on demand and cached.
#
#   make run [CONFIG=file.toml] [ARGS="--tcp 127.0.0.1:9741"]   runtime only, then the daemon
#   make test                                                 dev tools, llama.cpp, test models, checks
#   make lock                                                 move the pinned versions (edit pyproject first)
#   make install PREFIX=/opt/ratatoskr                        a non-editable runtime install for services
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime
DEV_STAMP := $(VENV)/.dev
GEN := ratatoskr_client/_proto
GEN_STAMP := $(GEN)/.generated
PROTOS := $(wildcard proto/ratatoskr/v1/*.proto)
PACKAGES := ratatoskr_server ratatoskr_client
# One configuration for every step that reads it (the model import and the daemon alike).
CONFIG ?=
CONFIG_ARG := $(if $(CONFIG),--config "$(CONFIG)")
# How llama-cpp-python is compiled (portable, no multimodal library) is pinned in pyproject.toml
# ([tool.uv.extra-build-variables]), where it is also part of uv's cache key for the built wheel.
export UV_PYTHON := $(PYTHON)
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test lint typecheck unit redis-server proto bytecode model runtime dev lock install bench bench-embed bench-chat bench-start bench-instructions bench-peers clean

run: $(GEN_STAMP) $(RUNTIME_STAMP) bytecode
	@echo "==> default model (imported once into local.model_dir)"
	$(VENV)/bin/ratatoskr models import --if-missing $(CONFIG_ARG)
	@echo "==> starting the daemon"
	$(VENV)/bin/ratatoskr serve $(CONFIG_ARG) $(ARGS)

test: lint typecheck unit

# Two workers (pytest-xdist), each module on one worker so its daemons and servers start once: most
# tests wait on child processes, so a 2-core machine runs the suite in about 60% of the time.
# PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
unit: $(GEN_STAMP) $(DEV_STAMP) redis-server bytecode
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

# The shared-state tests start Debian's redis-server themselves (on a Unix socket of their own; the
# system service is never used): installed once when it is not on PATH, quietly, nothing when it is.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "redis-server is not on PATH and apt-get is not available: install Redis 7 (redis-server) for the shared-state tests" >&2; exit 1; }; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  echo "==> redis-server (Debian's package, for the shared-state tests)"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null 2>&1 \
	    || { $$sudo apt-get update -qq >/dev/null && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } \
	    || { echo "installing redis-server with apt-get failed; install it by hand (apt-get install redis-server)" >&2; exit 1; }; }

lint: $(GEN_STAMP) $(DEV_STAMP)
	$(VENV)/bin/ruff check $(PACKAGES) tests bench
	$(VENV)/bin/ruff format --check $(PACKAGES) tests bench

typecheck: $(GEN_STAMP) $(DEV_STAMP)
	$(VENV)/bin/mypy --strict $(PACKAGES)

proto: $(GEN_STAMP)

# Our own modules' bytecode, brought up to date (only what changed is compiled): the dependencies'
# is compiled when uv installs them. With it a process starts from bytecode even where it may not
# write any (PYTHONDONTWRITEBYTECODE, a read-only tree); each daemon start, tests' included, saves
# compiling the package again.
bytecode: $(GEN_STAMP)
	$(PY) -m compileall -q $(PACKAGES) tests >/dev/null

runtime: $(RUNTIME_STAMP)

dev: $(DEV_STAMP)

model: $(GEN_STAMP) $(RUNTIME_STAMP)
	$(VENV)/bin/ratatoskr models import --if-missing $(CONFIG_ARG)

$(UV):
	@echo "==> uv $(UV_VERSION) into $(TOOLS)/ (installs from uv.lock)"
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --disable-pip-version-check -q uv==$(UV_VERSION)

# The runtime: the daemon's dependencies, the default model package and the stub generator.
# --inexact keeps what `make test` added, so switching between the two installs nothing.
$(RUNTIME_STAMP): pyproject.toml uv.lock | $(UV)
	@echo "==> runtime dependencies from uv.lock"
	$(UV) sync --frozen --inexact --compile-bytecode
	touch $@

# Everything for the tests. The first run on a machine compiles llama-cpp-python (about 7 minutes
# on 2 cores); uv caches the wheel, so later runs take seconds.
$(DEV_STAMP): pyproject.toml uv.lock | $(UV)
	@echo "==> test dependencies from uv.lock (the first run compiles llama-cpp-python: minutes)"
	$(UV) sync --frozen --all-groups --compile-bytecode
	touch $@ $(RUNTIME_STAMP)

lock: | $(UV)
	$(UV) lock --upgrade

# A service install (systemd, launchd, images): the runtime and the default model, no editable
# link to this checkout, no build tools. The stubs are generated first so the package carries them.
# Bytecode is compiled at install: a service's tree is read-only (ProtectSystem=strict, a read-only
# root filesystem), and without it every start would compile every module again (about 0.5 s).
# INSTALL_GROUPS= leaves the model package out (an image that bakes the imported model in).
INSTALL_GROUPS ?= --group model
install: $(GEN_STAMP)
	test -n "$(PREFIX)" || { echo "usage: make install PREFIX=/opt/ratatoskr"; exit 2; }
	UV_PROJECT_ENVIRONMENT="$(PREFIX)" $(UV) sync --frozen --no-editable --no-default-groups --compile-bytecode \
		$(INSTALL_GROUPS)

# Stubs are generated, never committed: protoc writes "from ratatoskr.v1 import",
# which we point at the package the stubs live in.
$(GEN_STAMP): $(PROTOS) $(RUNTIME_STAMP)
	rm -rf $(GEN) && mkdir -p $(GEN)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iproto \
		--python_out=$(GEN) --grpc_python_out=$(GEN) \
		--mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	sed -i -E 's/^from ratatoskr\.v1 import/from ratatoskr_client._proto.ratatoskr.v1 import/' \
		$(GEN)/ratatoskr/v1/*.py $(GEN)/ratatoskr/v1/*.pyi
	touch $(GEN)/__init__.py $(GEN)/ratatoskr/__init__.py $(GEN)/ratatoskr/v1/__init__.py
	touch $@

# Every performance figure of issue 17 in one run: bench/goals.py runs the chat, proxy, embedding and
# start benches (each against its baseline measured beside it) and prints each figure by its goal;
# then the per-stage costs.
bench: $(GEN_STAMP) $(DEV_STAMP) $(RUNTIME_STAMP)
	$(VENV)/bin/ratatoskr models import --if-missing $(CONFIG_ARG)
	$(PY) bench/goals.py $(ARGS)
	$(PY) bench/http_engine.py
	$(PY) bench/resilience.py
	$(PY) bench/failover.py
	$(PY) bench/spillover.py
	$(PY) bench/store.py

bench-embed: $(GEN_STAMP) $(RUNTIME_STAMP)
	$(VENV)/bin/ratatoskr models import --if-missing $(CONFIG_ARG)
	$(PY) bench/embed.py $(ARGS)

# Instructions per call in the daemon (valgrind's callgrind): the per-call cost without the VM's
# noise, the figure to compare two versions of the per-call path by. Needs valgrind.
bench-instructions: $(GEN_STAMP) $(DEV_STAMP)
	@command -v valgrind >/dev/null 2>&1 || { echo "bench-instructions needs valgrind (apt-get install valgrind)"; exit 2; }
	$(PY) bench/instructions.py $(ARGS)

# Start to SERVING (no model, the default model) and idle memory, against a bare grpc.aio server.
bench-start: $(GEN_STAMP) $(RUNTIME_STAMP)
	$(VENV)/bin/ratatoskr models import --if-missing $(CONFIG_ARG)
	$(PY) bench/startup.py $(ARGS)

# The peers the benches measure against, each in an environment of its own under bench/.peers (not
# project dependencies; the benches leave a missing one out and say so): LiteLLM's proxy for the
# chat throughput, Infinity's ONNX engine for the embeddings (it brings torch: about 5 GB).
LITELLM_PEER := litellm[proxy]==1.108.7
INFINITY_PEER := infinity-emb[optimum,server]==0.0.78
bench-peers: $(UV)
	test -x bench/.peers/litellm/bin/litellm || { $(UV) venv -q -p python3 bench/.peers/litellm && \
		VIRTUAL_ENV=bench/.peers/litellm $(UV) pip install -q "$(LITELLM_PEER)"; }
	test -x bench/.peers/infinity/bin/infinity_emb || { $(UV) venv -q -p python3 bench/.peers/infinity && \
		VIRTUAL_ENV=bench/.peers/infinity $(UV) pip install -q "$(INFINITY_PEER)"; }

# Chat latency the daemon adds over calling a loopback upstream directly; needs no local model.
bench-chat: $(GEN_STAMP) $(DEV_STAMP)
	$(PY) bench/chat_overhead.py $(ARGS)

clean:
	rm -rf $(GEN) .mypy_cache .ruff_cache .pytest_cache
