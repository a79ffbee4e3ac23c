.PHONY: run test test-dates bench soak reconcile services-up services-down clean

## Serve the dashboard on http://127.0.0.1:8000 (SQLite, eager tasks, Stripe simulator).
run:
	@scripts/run.sh

## Whole pytest suite against a throwaway MariaDB + Redis (+ Celery worker, simulator, Chromium).
test:
	@scripts/test.sh $(PYTEST_ARGS)

## Not CI: the whole suite once per date (2027-01-31 23:30, 2028-02-29 12:00, 2027-12-31 23:59 UTC) with the
## whole stack's clock moved by libfaketime, on its own MariaDB + Redis (scripts/test-dates.sh). TEST_DATES=… for others.
test-dates:
	@scripts/test-dates.sh $(PYTEST_ARGS)

## Benchmarks (figures printed, never asserted in the suite). `make bench soak` for the soak mode.
bench:
	@scripts/bench.sh $(filter-out bench,$(MAKECMDGOALS))

soak:
	@:

## `make bench reconcile`: 1M billable actions, time `manage.py reconcile` + peak RSS (bench/reconcile_bench.py).
reconcile:
	@:

services-up:
	@scripts/bootstrap.sh test && scripts/services.sh start

services-down:
	@scripts/services.sh stop

clean:
	rm -rf .local test-artifacts
