"""`python -m host [--bind HOST:PORT] [--workers N]`: the Dakar host in the foreground (systemd runs it so)."""

from __future__ import annotations

import argparse
import os
import sys

from host import server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m host", description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1:3100", help="address:port to listen on (default 127.0.0.1:3100)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per core)")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    if not host or not port.isdigit() or args.workers < 1:
        parser.error("--bind takes HOST:PORT and --workers a whole number of at least 1")
    return server.serve(host.strip("[]"), int(port), args.workers)


if __name__ == "__main__":
    sys.exit(main())
