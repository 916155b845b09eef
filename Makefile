# Build and test entry points. `make test` is what CI runs (see .ci/run).
#
#   make deps   install msmtp from Debian when it is missing
#   make venv   create .venv and install the package with its test extras
#   make test   run the test suite against the real msmtp
#   make lint   check formatting and lint with ruff
#   make demo   deliver FastNetMon's recorded calls to a local SMTP server
#   make bench  measure speed and memory against msmtpq (see BENCHMARKS.md)

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Stamp file: reinstall when the packaging metadata changes.
VENV_STAMP := $(VENV)/.installed

# apt-get needs root; use sudo only when make is not already running as root.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: deps venv test lint demo bench clean

deps:
	@if ! command -v msmtp >/dev/null 2>&1; then \
		echo "msmtp not found: installing Debian's msmtp"; \
		$(APT_GET) update && $(APT_GET) install -y msmtp; \
	fi

venv: $(VENV_STAMP)

# Debian's own python3 lacks ensurepip, and so cannot create a venv, until
# python3-venv is installed. pyenv's and python.org's builds include it.
$(VENV_STAMP): pyproject.toml setup.py
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		echo "$(PYTHON) cannot create a venv: installing Debian's python3-venv"; \
		$(APT_GET) update && $(APT_GET) install -y python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

test: deps venv
	$(VENV_PYTHON) -m pytest -q

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

demo: deps venv
	$(VENV_PYTHON) demo/demo.py

bench: deps venv
	$(VENV_PYTHON) bench/run.py

clean:
	rm -rf $(VENV) *.egg-info
