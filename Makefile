# The two commands: `make run` and `make test`. Both build .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test migrate deploy bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

migrate: $(STAMP)
	$(BIN)/sopflow db upgrade

deploy: migrate
	$(BIN)/sopflow deploy processes/

run: deploy
	$(BIN)/sopflow users demo
	$(BIN)/sopflow serve

test: $(STAMP)
	$(BIN)/ruff check engine api web tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/engine.py

lint: $(STAMP)
	$(BIN)/ruff check engine api web tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data .pytest_cache
