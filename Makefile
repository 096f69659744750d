# Two entry points for people (see README): `make demo` and `make test`.
# Everything runs inside a project-local virtual environment so a fresh
# machine with only Python 3.11+ is enough.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-loaded test-uvloop lint typecheck unit venv clean fuzz faults soak data mutation

# The first run takes a minute or two: say so, and let pip name each package as it comes.
$(STAMP): pyproject.toml
	@echo "==> creating the virtual environment $(VENV) (first run only, a minute or two)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> upgrading pip"
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "==> installing the gateway and its development tools into $(VENV)"
	$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	touch $(STAMP)
	@echo "==> ready: the gateway command is $(abspath $(BIN))/gateway"

venv: $(STAMP)

demo: $(STAMP)
	@echo "==> running $(abspath $(BIN))/gateway demo (the command stays there afterwards)"
	$(BIN)/gateway demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs on every core: pytest-xdist starts one worker process per core (-n auto) and
# hands each a whole test file at a time (--dist loadfile), because a file's tests share
# module-scoped servers and processes and some follow one gateway through its life in order.
# Files go out in the order tests/conftest.py gives them, the long ones (marked slow) first
# (--no-loadscope-reorder keeps that order), so none is left running alone at the end.
# pytest-cov combines the workers' coverage. `-n 0` on the command line runs it in one process.
PARALLEL = -n auto --dist loadfile --no-loadscope-reorder

unit: $(STAMP)
	$(BIN)/python -m pytest $(PARALLEL) --cov --cov-report=term -q

test: lint typecheck unit

# The security and pipeline suites again, beside one busy-looping process per core: a test that
# depends on the machine's speed fails here (CI runs it after `make test`).
test-loaded: $(STAMP)
	$(BIN)/python tests/run_loaded.py

# The suites that exercise the event loop's own work (sockets, TLS, the relay listener and its
# WebSockets, the proxy tunnel through squid, the forward, the LDAP proxy with slapd, mTLS to the
# control plane, the whole agent in-process) again on uvloop's loop (tests/conftest.py): the
# loop `gateway run` serves on by default. The tests that start `gateway run` itself (workers,
# signals, reloads, the policy planner's child) already run on it in `make test`.
UVLOOP_SUITES = tests/integration/relay tests/integration/forward tests/integration/ldap \
	tests/integration/identity/test_identity_mtls.py \
	tests/integration/identity/test_identity_proxy.py \
	tests/integration/streams/test_pipeline_streams.py tests/integration/test_end_to_end.py
test-uvloop: $(STAMP)
	TEST_EVENT_LOOP=uvloop $(BIN)/python -m pytest $(PARALLEL) -q -p no:cacheprovider $(UVLOOP_SUITES)

# Long forms of the proof suites (the short forms run in `make test`).
fuzz: $(STAMP)
	$(BIN)/python fuzz/run.py --seconds 600

faults: $(STAMP)
	$(BIN)/python benchmarks/faults.py --long

soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py --minutes 30

# Mutation testing of the security core (benchmarks/mutation-report.md): far too slow for CI on
# two cores, so only by hand. The modules and the fast tests are listed under [tool.mutmut] in
# pyproject.toml; mutants/ is mutmut's scratch copy of the package.
# Polite on a shared 2-core machine: lowered priority, two workers. One module at a time with
# e.g. `make mutation MUTANTS='gateway.forward.dial*'` (benchmarks/mutation-report.md).
MUTANTS ?=
mutation: $(STAMP)
	set -f; nice -n 10 $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/mutmut results

# The packaged copies of the human-facing policies/, schemas/ and gateway.yaml.example (what the
# installed gateway reads; tests/unit/packaging/test_package_data.py keeps them equal).
data:
	cp -R policies/. gateway/data/policies/
	cp schemas/* gateway/data/schemas/
	cp gateway.yaml.example gateway/data/gateway.yaml.example

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage
