"""Every bench mode of scripts/bench.sh, run tiny (a few hundred rows, well under a second of load),
so a bench cannot rot unnoticed (`make bench reconcile` once crashed on a column a migration added).

The figures are printed (see them with `-s`), never asserted: only that each bench ran end to end
against this session's test database and produced its figures. The HTTP benches drive pytest-django's
live server instead of gunicorn (starting gunicorn and migrating a bench database is what
scripts/bench.sh adds around these same functions).
"""
from __future__ import annotations

import importlib
import io
import json
import time

import pytest
from django.core.management import call_command
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)  # the benches' own connections see committed rows


def _test_db_url() -> str:
    sd = connection.settings_dict
    return f"mysql://{sd['USER']}:{sd['PASSWORD']}@{sd['HOST']}:{sd['PORT']}/{sd['NAME']}"


def test_reconcile_bench_runs_small():
    """`make bench reconcile` (bench/reconcile_bench.py), 300 actions over 5 orgs."""
    reconcile_bench = importlib.import_module("bench.reconcile_bench")

    results = reconcile_bench.run(_test_db_url(), sizes=[300], orgs=5, fresh_database=False)

    [r] = results
    assert r["inserted"] == 300
    assert {"seconds", "rss_kib", "fix_seconds", "recheck_seconds", "insert_seconds"} <= r.keys()
    # the planted drift is what the bench times reconcile finding and fixing: it must still be found
    assert (r["found"], r["exit"], r["fix_exit"], r["recheck_exit"]) == (r["planted"], 1, 0, 0)


def test_engine_bench_runs_small(live_server, settings):
    """`make bench` (bench/engine_prepare.py + bench/engine_bench.py): every scenario for 0.3 s, 2 clients,
    then the drift check bench.sh ends with."""
    engine_prepare = importlib.import_module("bench.engine_prepare")
    engine_bench = importlib.import_module("bench.engine_bench")
    prep = engine_prepare.create_orgs(n_orgs=3)

    results = engine_bench.run(live_server.url, settings.ORCHESTRATOR_SERVICE_TOKEN, prep, seconds=0.3, clients=2,
                               batch_clients=1, batch_size=20, warm_seconds=0, db_url=_test_db_url())
    drift = engine_prepare.drift_report()
    print(json.dumps({k: v["actions_per_s"] for k, v in results.items() if isinstance(v, dict)}), drift)

    for scenario in ("hot", "orgs", "batch", "raw"):
        assert results[scenario]["actions"] > 0, (scenario, results[scenario]["statuses"])
    assert drift["actions"] > 0 and drift["drifted"] == []


def test_soak_bench_runs_small(live_server, settings):
    """`make bench soak` (bench/soak.py): every kind of client for 1 s against 2 orgs, then reconcile."""
    soak = importlib.import_module("bench.soak")
    settings.ORCHESTRATOR_SERVICE_TOKEN = soak.TOKEN
    settings.STRIPE_WEBHOOK_SECRET = soak.WEBHOOK_SECRET
    prep = soak.prepare_orgs(n_orgs=2)

    stats = soak.Stats()
    started = time.monotonic()
    soak.run_load(live_server.url, prep["orgs"], stats, started + 1.0,
                  clients={"record": 1, "check": 1, "dashboard": 1, "webhook": 1})
    total_5xx = soak.print_figures(stats, time.monotonic() - started)
    out = io.StringIO()
    try:
        call_command("reconcile", "--json", stdout=out)
    except SystemExit as exc:  # exit 1 on drift
        assert exc.code == 0, out.getvalue()
    print(out.getvalue())

    assert {kind: bool(stats.latency[kind]) for kind in soak.CLIENTS} == dict.fromkeys(soak.CLIENTS, True)
    assert total_5xx == 0, dict(stats.samples)
    assert json.loads(out.getvalue())["driftedOrgs"] == 0
