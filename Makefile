# The two commands a new user needs are `make run` and `make test` (see README.md).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run observe dashboards test lint typecheck test-unit fuzz venv mariadb bench-edge bench-price bench-shadow bench-order bench-events bench-pay demo-traffic clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

mariadb:
	bash scripts/ensure-mariadb.sh

# RUN_ARGS="--fresh --port-offset 100": scripts/stack.py's options (--help lists them).
run: $(STAMP)
	$(BIN)/python scripts/stack.py $(RUN_ARGS)

# `make run` plus a real Prometheus on :9090 (scrapes the edge and the consumers, prometheus/alerts.yml loaded; data in var/).
observe: $(STAMP)
	bash scripts/ensure-promtool.sh
	$(BIN)/python scripts/stack.py --observe $(RUN_ARGS)

# grafana/dashboards/*.json from grafana/build.py (grafana-foundation-sdk): edit the Python, then run this and commit both.
dashboards: $(STAMP)
	$(BIN)/python grafana/build.py

PY_DIRS := common adapters shop handlers proxy shadow emulators consumers scripts bench tests grafana

# Two workers, each taking whole modules (module fixtures: the broker, private databases), each on its own
# MariaDB database (tests/conftest.py): 13.5 min one by one, 7 min so on this 2-core box.
test: $(STAMP) mariadb lint typecheck
	bash scripts/ensure-promtool.sh
	bash scripts/ensure-chromium.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25

# Unused imports and names, undefined names, shadowed fixtures: cheap, and caught before the tests run.
lint: $(STAMP)
	$(BIN)/python -m pyflakes $(PY_DIRS)

# Type hints are checked, not just written ([tool.mypy] in pyproject.toml says what).
typecheck: $(STAMP)
	$(BIN)/python -m mypy

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

# The fuzz test of `make test`, with many random examples instead of a fixed few (FUZZ_EXAMPLES=N to change).
FUZZ_EXAMPLES ?= 3000
fuzz: $(STAMP) mariadb
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider tests/e2e/test_fuzz_edge.py

# Stops by itself after 15 min; DEMO_ARGS="--seconds 60" for less, "--seconds 0" to run until Ctrl-C.
demo-traffic: $(STAMP)
	$(BIN)/python scripts/demo_traffic.py $(DEMO_ARGS)

bench-edge: $(STAMP)
	bash bench/edge.sh

bench-price: $(STAMP) mariadb
	bash bench/price.sh

bench-shadow: $(STAMP) mariadb
	bash bench/shadow.sh

bench-order: $(STAMP) mariadb
	bash bench/order.sh

# payment_notified_cm through one shopping-consumers process on MariaDB (BENCH_ARGS="--orders 10000" for a short run).
bench-events: $(STAMP) mariadb
	$(BIN)/python bench/eventbench.py $(BENCH_ARGS)

# adyen_pay through the edge (PSP emulator answering in 50 ms), the Adyen webhook bridge, then every order's payments
# checked (BENCH_ARGS="--scenarios shared --max-seconds 10" for a short run; --profile adds py-spy of the edge).
bench-pay: $(STAMP) mariadb
	bash -c 'source bench/lib.sh && need_tools taskset:util-linux && exec $(BIN)/python bench/paybench.py $(BENCH_ARGS)'

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
