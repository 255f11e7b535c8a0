# rolekit: two commands on a fresh machine -- `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Full suite on these majors; the compatibility subset also on COMPAT_VERSIONS.
PG_VERSIONS     ?= 15 17
COMPAT_VERSIONS ?= 14 16 18
# Tests mostly wait on servers and subprocesses: more workers than cores pays off.
TEST_WORKERS    ?= 4
# age, pgbouncer and zsh (its completion test) come from Debian packages.
DEB_PACKAGES    ?= age pgbouncer zsh

.PHONY: venv test test-fast demo bench lint debs clean bytecode docs

# The extras users install, and the dependency groups (PEP 735) that develop
# rolekit: pip reads --group from 25.1 on, hence the upgrade first.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[age]' --group test --group lint --group bench --group docs
	touch $@

venv: $(VENV)/.installed

# The documentation site, warnings and broken references (-n) as errors.
docs: venv
	$(VENV)/bin/sphinx-build -W -n --keep-going -q -b html docs docs/_build/html

debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: not root, cannot install$$missing; tests needing them will fail"; fi; \
	fi

lint: venv
	$(VENV)/bin/ruff check rolekit tests bench scripts examples
	$(VENV)/bin/ruff format --check rolekit tests bench scripts examples
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict --ignore-missing-imports examples
	$(VENV)/bin/mypy --strict migrations/versions

# Bytecode up front, as an installed package has it: every alembic/rolekit
# subprocess would otherwise compile rolekit again (PYTHONDONTWRITEBYTECODE).
bytecode: venv
	$(PY) -m compileall -q rolekit tests bench

test: venv debs bytecode docs
	$(PY) scripts/fetch_pg.py $(filter-out 15,$(PG_VERSIONS) $(COMPAT_VERSIONS))
	$(MAKE) lint
	ROLEKIT_PG_VERSIONS="$(PG_VERSIONS)" ROLEKIT_COMPAT_VERSIONS="$(COMPAT_VERSIONS)" \
	  $(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal

# What needs no PostgreSQL server: rendering, parsing, secrets, structure (seconds).
test-fast: venv bytecode
	$(PY) -m pytest -p no:cacheprovider -q -m "not server"

demo: venv bytecode
	$(PY) -m bench.demo

# The drain bench measures login tracking on PostgreSQL 17 (a login event trigger).
bench: venv debs bytecode
	$(PY) scripts/fetch_pg.py 17
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info docs/_build
