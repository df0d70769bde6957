# The two commands: `make run` and `make test`. Both build .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test migrate deploy bench lint clean assets messages

# Front-end assets (web/static/vendor/, git-ignored): bpmn-js + Swagger UI from the pinned
# web/frontend/package-lock.json, built with the machine's node/npm when missing or older
# than what they are built from. Nothing is fetched at run time.
FRONTEND := web/frontend
VENDOR := web/static/vendor
ASSETS_STAMP := $(VENDOR)/.built-stamp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(ASSETS_STAMP): $(FRONTEND)/package.json $(FRONTEND)/package-lock.json $(FRONTEND)/build.mjs $(wildcard $(FRONTEND)/src/*)
	@command -v npm >/dev/null 2>&1 || { echo "make assets: node and npm are needed to build $(VENDOR) (e.g. apt-get install nodejs npm)" >&2; exit 1; }
	cd $(FRONTEND) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	cd $(FRONTEND) && node build.mjs
	touch $@

assets: $(ASSETS_STAMP)

migrate: $(STAMP)
	$(BIN)/sopflow db upgrade

deploy: migrate
	$(BIN)/sopflow deploy processes/

run: deploy assets
	$(BIN)/sopflow users demo
	$(BIN)/sopflow serve

test: $(STAMP) $(ASSETS_STAMP)
	$(BIN)/ruff check engine api web tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/engine.py

# The engine's refusal messages (templates with {placeholders}, see engine/errors.py) into the
# Chinese catalog web/locale/zh_Hans/LC_MESSAGES/errors.po: new ones are added untranslated,
# existing translations kept, gone ones dropped. tests/test_error_messages.py fails until each
# has a translation with the same placeholders.
ERROR_KEYWORDS := Phrase SopflowError NotFound Conflict Forbidden InvalidInput InvalidDefinition ScriptError \
	StaleInstance TooLarge UnsupportedType BudgetExceeded Unauthorized _Unauthorized reason
ERRORS_PO := web/locale/zh_Hans/LC_MESSAGES/errors.po

messages: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg --no-default-keywords $(addprefix -k ,$(ERROR_KEYWORDS)) \
		--no-location --omit-header --sort-output -o $(VENV)/errors.pot engine api web
	$(BIN)/pybabel update --no-fuzzy-matching --ignore-obsolete -l zh_Hans -D errors -d web/locale \
		-i $(VENV)/errors.pot --init-missing

lint: $(STAMP)
	$(BIN)/ruff check engine api web tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data .pytest_cache $(VENDOR) $(FRONTEND)/node_modules
