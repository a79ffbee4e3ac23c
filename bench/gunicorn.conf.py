"""gunicorn settings for the usage API (used by `make bench`; fine for production too).

A worker's threads share one GIL. A thread holding an org's balance row lock that gets its query
result back must win the GIL before it can send the next statement; with CPython's default 5 ms
switch interval, other busy threads of the same worker can keep it waiting that long while the
row stays locked. A short interval keeps the lock hold time near the database's own.
"""
import os
import sys

worker_class = "gthread"
keepalive = 60
backlog = 2048


def post_fork(server, worker):  # noqa: ARG001 - gunicorn hook signature
    sys.setswitchinterval(float(os.environ.get("GUNICORN_SWITCH_INTERVAL", "0.0005")))
