# guestsync: `make demo` runs the whole job locally, `make test` runs the test suite.
# Both install what they need on a fresh Debian machine (run as root for the apt step).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AZURITE_VERSION := 3.37.0
# krb5-user: kinit/klist/kvno (Kerberos tests); libkrb5-dev, gcc, python3-dev: to build the gssapi package (no Linux wheel)
APT_PACKAGES := samba samba-ad-dc samba-ad-provision winbind ldb-tools openssl krb5-user libkrb5-dev gcc python3-dev

.PHONY: deps deps-python deps-azurite deps-samba test lint reliability demo bench clean

deps: deps-python deps-azurite deps-samba

deps-python: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml | deps-samba  # gssapi builds against libkrb5
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

deps-azurite: .tools/node_modules/.bin/azurite
.tools/node_modules/.bin/azurite:
	mkdir -p .tools
	npm install --silent --no-audit --no-fund --prefix .tools azurite@$(AZURITE_VERSION)

deps-samba:
	@if ! command -v samba >/dev/null || ! command -v samba-tool >/dev/null || [ ! -d /usr/share/samba/setup ] \
	    || ! command -v kinit >/dev/null || ! command -v krb5-config >/dev/null || ! command -v gcc >/dev/null; then \
	  echo "installing Samba AD DC and Kerberos packages (apt)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or: sudo apt-get install $(APT_PACKAGES)"; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

lint: deps-python
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared devtools function_app.py
	$(VENV)/bin/lint-imports --no-cache

test: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared devtools function_app.py
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -p no:cacheprovider

reliability: deps  # the fault-injection suite only (it also runs in `make test`)
	$(PY) -m pytest -q -p no:cacheprovider tests/reliability

demo: deps
	$(PY) -m shared.cli demo

bench: deps  # all benchmarks at their default sizes (bench/RESULTS.md); one: $(PY) -m bench <name> --help
	$(PY) -m bench

clean:
	rm -rf $(VENV) .tools .demo .pytest_cache .mypy_cache .ruff_cache
