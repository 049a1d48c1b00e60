# shellgate: `make demo` and `make test` set everything up themselves on a
# fresh Debian machine (run as root): apt packages, a venv, the Python deps.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# gcc, libssl-dev, python3-dev: setup.py builds gateway/_wire.c (C AES-GCM for the relay)
# and recorder/_escape.c (JSON escaping of recorded output)
APT_PKGS := openssh-server openssh-client tmux vim less gcc libssl-dev python3-dev
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test lint typecheck bench soak clean

setup: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi; \
	mkdir -p /run/sshd

$(STAMP): pyproject.toml setup.py gateway/_wire.c recorder/_escape.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/python -m gateway.demo

test: setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check config store recorder gateway tests bench
	$(BIN)/ruff format --check config store recorder gateway tests bench
	$(BIN)/mypy config store recorder gateway bench

bench: setup
	$(BIN)/python -m bench.run

soak: setup
	$(BIN)/pytest -q -m soak tests

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
