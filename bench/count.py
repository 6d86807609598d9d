#!/usr/bin/env python3
"""Count the instructions metagateway executes per request (issue 19).

Wall-clock figures move with whatever else the machine does; the number
of instructions a process executes per request does not. This script
starts the nginx upstream of ``bench/run.py`` and the real daemon
(``twistd -n metagateway``) under ``valgrind --tool=callgrind``, logs in,
warms up over one keep-alive connection, zeroes callgrind's counters
(``callgrind_control -z``), sends ``--requests`` sequential requests
(``GET /build/small`` with a bearer token), dumps the counters and prints
the instructions per request. Compare two checkouts with ``--source``,
and metagateway with the benchmark's bare proxy (``--bare``: Twisted's
``Agent`` and pool, nothing else) to see what the gateway's own work costs.

    python bench/count.py                          # text access log (the default)
    python bench/count.py --access-log json --requests 3000
    python bench/count.py --source /tmp/old-checkout   # the code measured
    python bench/count.py --bare                       # bench/bareproxy.py
    python bench/count.py --assertion-key key.pem      # each request signs

Repeated runs agree within about 0.5 %; a change of a few per cent is real.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402 (the benchmark's helpers, beside this file)


def requests(port: int, path: str, token: str | None, count: int) -> None:
    """Send ``count`` sequential GETs on one keep-alive connection; each
    must answer 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": "Bearer " + token} if token else {}
    for _ in range(count):
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{path} answered {response.status}")
    conn.close()


def wait_port(lab: run.Lab, proc: subprocess.Popen[bytes], port: int) -> None:
    """Wait (up to 3 minutes: valgrind starts slowly) for the daemon."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("daemon exited: " + lab.log_tail("count", 5))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("daemon not listening after 180 s")


def totals(out: str) -> int:
    """The ``totals:`` (or ``summary:``) instruction count of a dump."""
    for line in Path(out).read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--access-log", choices=("text", "json", "off"), default="text")
    parser.add_argument("--source", help="checkout whose code is measured")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--bare", action="store_true", help="count bench/bareproxy.py instead"
    )
    parser.add_argument(
        "--assertion-key",
        metavar="FILE",
        help="GATEWAY_ASSERTION_KEY_FILE for the daemon (each request signs)",
    )
    args = parser.parse_args(argv)
    tools = run.ensure_tools(os.geteuid() == 0)
    valgrind = run.find_tool("valgrind")
    control = run.find_tool("callgrind_control")
    if not valgrind or not control:
        raise SystemExit("needs valgrind (apt-get install -y valgrind)")
    lab = run.Lab(keep=args.keep)
    try:
        upstream = run.start_upstream(lab, tools["nginx"])
        accounts = lab.dir / "accounts"
        password = run.write_account(accounts)
        port = lab.free_port()
        env = run.clean_env(
            GATEWAY_JWT_SECRET=secrets.token_hex(32),
            BUILD_SERVICE_URL=f"http://127.0.0.1:{upstream.port}",
        )
        if args.assertion_key:
            env["GATEWAY_ASSERTION_KEY_FILE"] = str(Path(args.assertion_key).resolve())
        if args.source:
            env["PYTHONPATH"] = str(Path(args.source).resolve())
        out = lab.dir / "callgrind.out"
        if args.bare:
            command = [
                str(Path(__file__).resolve().parent / "bareproxy.py"),
                "--port",
                str(port),
                "--upstream",
                env["BUILD_SERVICE_URL"],
            ]
        else:
            command = run.gateway_args(port, accounts, "--access-log", args.access_log)
        proc = lab.start(
            "count",
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}.%p",
                args.python,
            ]
            + command,
            env=env,
            cwd=Path(args.source) if args.source else run.ROOT,
        )
        wait_port(lab, proc, port)
        token = None  # the bare proxy checks none
        if not args.bare:
            token = run.login(port, password)
        path = "/small" if args.bare else "/build/small"
        requests(port, path, token, args.warmup)
        subprocess.run([control, "-z", str(proc.pid)], check=True, capture_output=True)
        requests(port, path, token, args.requests)
        subprocess.run([control, "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(1)  # the buffered access log's last lines
        dumps = sorted(glob.glob(f"{out}.{proc.pid}*"), key=os.path.getmtime)
        count = totals(dumps[-1])
        per = count / args.requests
        lines = sum(
            1
            for line in (lab.dir / "count.log").read_text(errors="replace").splitlines()
            if path in line
        )
        what = "bare proxy" if args.bare else f"access log {args.access_log}"
        print(
            f"{what}: {per / 1e6:.4f} M instructions per request "
            f"({count} over {args.requests} requests; {lines} access-log lines seen)"
        )
        return 0
    finally:
        lab.close()


if __name__ == "__main__":
    sys.exit(main())
