"""`python -m stripe_sim --port 12111 --webhook-url URL --webhook-secret whsec_…` (TEST DOUBLE of Stripe)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from . import DEFAULT_API_VERSION
from .server import App, make_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stripe_sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--public-url", default=None, help="base of hosted page URLs (default http://HOST:PORT)")
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--webhook-secret", default=None)
    parser.add_argument("--api-version", default=DEFAULT_API_VERSION)
    parser.add_argument("--state-file", default=None, help="JSON state file (e.g. .local/stripe_sim.json)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    app = App(public_url=public_url, webhook_url=args.webhook_url, webhook_secret=args.webhook_secret,
              api_version=args.api_version, state_file=args.state_file)
    server = make_server(host=args.host, port=args.port, app=app)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"stripe_sim (test double) listening on {public_url} api_version={args.api_version}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.deliverer.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
