#!/usr/bin/env python3
"""Soak metagateway under mixed traffic and watch its memory and file descriptors.

Issue 19, item 4. One command starts, on 127.0.0.1, the benchmark's nginx
upstream (``/small``, the 1 MiB ``/big``), a Python upstream of this file's
own (``/upload`` reads a body and answers, ``/slow`` answers after a pause,
``/reset`` sends a head and part of a 1 MiB body, then resets the
connection) and the real daemon (``twistd -n metagateway --config``), then:

1. measures the capacity of the mixed traffic (every kind at full speed,
   ``--calibrate`` seconds), then tunes each kind's pacing to about
   ``--load`` (80 %) of it;
2. drives the mix for ``--duration`` (10 minutes by default) with one
   ``wrk`` per kind of request (each with a Lua script that counts the
   statuses it sees), sampling the daemon's RSS (``VmRSS``) and open file
   descriptors (``/proc/PID/fd``) every ``--interval`` seconds;
3. writes a CSV of the samples and a PNG plot (matplotlib), prints per
   kind the requests and statuses, and a verdict.

    python bench/soak.py                         # 10 minutes
    python bench/soak.py --duration 90s --csv /tmp/soak.csv --png /tmp/soak.png

Pass: every kind got only its expected statuses (and socket errors only
where the upstream resets), RSS grew less than 5 % from the end of the
warm-up to the end, and the open file descriptors stayed flat (the last
sample at most ``max(8, 10 %)`` above the first after the warm-up), and
the daemon logged no traceback. Exit
status 0 on pass, 1 on fail.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402 (the benchmark's helpers, beside this file)

#: The slow upstream's pause before answering, in seconds.
SLOW_SECONDS = 1.0

#: Bytes of its 1 MiB body the resetting upstream sends before the reset.
RESET_AFTER = 256 * 1024


# --------------------------------------------------------------------------
# The Python upstream (``--serve-upstream PORT``, run as a child)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve keep-alive HTTP/1.1 requests on one connection."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            received = 0
            while received < length:
                chunk = await reader.read(min(65536, length - received))
                if not chunk:
                    return
                received += len(chunk)
            if path.startswith("/reset"):
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: %d\r\n\r\n" % run.BIG_SIZE
                )
                writer.write(b"r" * RESET_AFTER)
                await writer.drain()
                await asyncio.sleep(0.05)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                writer.transport.abort()  # closes with SO_LINGER 0: a reset
                return
            if path.startswith("/slow"):
                await asyncio.sleep(SLOW_SECONDS)
            body = json.dumps({"path": path, "received": received}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError, ValueError):
        pass
    finally:
        writer.close()


def serve_upstream(port: int) -> None:
    """Run the Python upstream on 127.0.0.1:``port`` until killed."""

    async def main() -> None:
        server = await asyncio.start_server(_handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --------------------------------------------------------------------------
# The traffic


@dataclass
class Kind:
    """One kind of request, driven by a wrk of its own.

    :ivar name: short name (CSV, plot, report).
    :ivar method: HTTP method.
    :ivar path: request path.
    :ivar connections: wrk connections.
    :ivar expected: statuses a complete answer may have.
    :ivar cut: a cut connection (wrk read error) is the expected outcome.
    :ivar fixed_delay: ms between a connection's requests, whatever the
        capacity (slow and resetting upstreams are paced, not pushed).
    :ivar headers: request headers.
    :ivar body: request body (Lua expression), if any.
    """

    name: str
    method: str
    path: str
    connections: int
    expected: frozenset[int]
    cut: bool = False
    fixed_delay: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    delay_ms: float = 0.0


def kinds(token: str, password: str) -> list[Kind]:
    """The mix: what each kind sends and what it must get back."""
    auth = {"Authorization": "Bearer " + token}
    login = json.dumps({"username": run.USERNAME, "password": password})
    return [
        Kind("small", "GET", "/build/small", 12, frozenset({200}), headers=auth),
        Kind("big", "GET", "/build/big", 3, frozenset({200}), headers=auth),
        Kind(
            "upload",
            "POST",
            "/py/upload",
            2,
            frozenset({200}),
            headers={**auth, "Content-Type": "application/octet-stream"},
            body=f'string.rep("u", {run.BIG_SIZE})',
        ),
        Kind(
            "login",
            "POST",
            "/auth/login",
            2,
            frozenset({200}),
            headers={"Content-Type": "application/json"},
            body=json.dumps(login),
        ),
        Kind(
            "badtoken",
            "GET",
            "/build/small",
            2,
            frozenset({403}),
            headers={"Authorization": "Bearer not.a.token"},
        ),
        Kind(
            "slow", "GET", "/py/slow", 4, frozenset({200}), fixed_delay=0, headers=auth
        ),
        # The gateway has relayed the head when the upstream resets: the
        # client's connection is cut mid-body. A 502 (the reset read before
        # the head) is allowed too.
        Kind(
            "reset",
            "GET",
            "/py/reset",
            1,
            frozenset({502}),
            cut=True,
            fixed_delay=200,
            headers=auth,
        ),
    ]


LUA = """
local delay_ms = %(delay)f
wrk.method = %(method)s
wrk.path = %(path)s
%(headers)s
%(body)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function delay()
  if delay_ms <= 0 then return 0 end
  local base = math.floor(delay_ms)
  if math.random() < delay_ms - base then return base + 1 end
  return base
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do all[k] = (all[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(all) do table.insert(parts, string.format('"%%d": %%d', k, v)) end
  io.write("SOAK-STATUSES {" .. table.concat(parts, ", ") .. "}\\n")
end
"""


def lua_string(text: str) -> str:
    """A Lua string literal (JSON's escapes are Lua's for what we send)."""
    return json.dumps(text)


def write_script(lab: run.Lab, kind: Kind) -> Path:
    """The wrk Lua script of ``kind`` at its current pacing."""
    headers = "\n".join(
        f"wrk.headers[{lua_string(k)}] = {lua_string(v)}"
        for k, v in kind.headers.items()
    )
    body = f"wrk.body = {kind.body}" if kind.body else ""
    path = lab.dir / f"wrk-{kind.name}.lua"
    path.write_text(
        LUA
        % {
            "delay": kind.delay_ms,
            "method": lua_string(kind.method),
            "path": lua_string(kind.path),
            "headers": headers,
            "body": body,
        }
    )
    return path


@dataclass
class Outcome:
    """What one kind's wrk saw."""

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Completed answers per second."""
        return sum(self.statuses.values()) / self.seconds if self.seconds else 0.0


def start_wrk(
    lab: run.Lab, wrk: str, kind: Kind, port: int, seconds: float
) -> subprocess.Popen[str]:
    """Start one wrk for ``kind`` (one thread; 10 s timeout for the slow ones)."""
    script = write_script(lab, kind)
    return subprocess.Popen(
        [
            wrk,
            "-t1",
            f"-c{kind.connections}",
            f"-d{int(seconds)}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def parse_outcome(out: str, seconds: float) -> Outcome:
    """Statuses (from the Lua ``done``), requests and socket errors of one wrk."""
    outcome = Outcome(seconds=seconds)
    m = re.search(r"SOAK-STATUSES (\{.*\})", out)
    if m:
        outcome.statuses = {int(k): v for k, v in json.loads(m.group(1)).items()}
    total = re.search(r"(\d+) requests in", out)
    outcome.requests = int(total.group(1)) if total else 0
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if sock:
        for name, value in zip(("connect", "read", "write", "timeout"), sock.groups()):
            if int(value):
                outcome.errors[name] = int(value)
    if "SOAK-STATUSES" not in out:
        outcome.errors["wrk"] = 1
        print(f"  wrk output without statuses: {out.strip()[-300:]}", flush=True)
    return outcome


def drive(
    lab: run.Lab, wrk: str, mix: list[Kind], port: int, seconds: float
) -> dict[str, Outcome]:
    """Run every kind's wrk at once for ``seconds``; collect the outcomes."""
    procs = {k.name: start_wrk(lab, wrk, k, port, seconds) for k in mix}
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=seconds + 60)
        results[name] = parse_outcome(out, seconds)
    return results


def calibrate(
    lab: run.Lab, wrk: str, mix: list[Kind], port: int, seconds: float, load: float
) -> dict[str, float]:
    """Measure each pushed kind's rate at full speed, then pace it to ``load``
    of that rate: delay = connections / target - latency, the latency read
    from a second, paced run. Returns the capacity per kind (answers/s)."""
    for kind in mix:
        kind.delay_ms = kind.fixed_delay or 0.0
    full = drive(lab, wrk, mix, port, seconds)
    capacity = {name: o.rate for name, o in full.items()}
    pushed = [k for k in mix if k.fixed_delay is None]
    for kind in pushed:
        kind.delay_ms = 1000.0 * kind.connections / max(load * capacity[kind.name], 0.1)
    trial = drive(lab, wrk, mix, port, seconds)
    for kind in pushed:
        target = load * capacity[kind.name]
        got = trial[kind.name].rate
        if got > 0:
            # one connection's cycle = latency + delay
            latency = 1000.0 * kind.connections / got - kind.delay_ms
            kind.delay_ms = max(
                0.0, 1000.0 * kind.connections / max(target, 0.1) - latency
            )
    return capacity


# --------------------------------------------------------------------------
# Sampling


def tree_sample(root: int) -> tuple[float, int, int]:
    """RSS (MiB, summed), open fds and processes of ``root``'s tree."""
    rss_kib, fds, procs = 0, 0, 0
    for pid in run.process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            rss_kib += int(m.group(1)) if m else 0
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            procs += 1
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return rss_kib / 1024.0, fds, procs


class Sampler(threading.Thread):
    """Samples the daemon every ``interval`` seconds until stopped."""

    def __init__(self, root: int, interval: float, until: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.until = root, interval, until
        self.start_time = time.monotonic()
        self.samples: list[tuple[float, float, int, int]] = []
        self.stopping = threading.Event()

    def take(self) -> None:
        """One sample now."""
        rss, fds, procs = tree_sample(self.root)
        t = time.monotonic() - self.start_time
        self.samples.append((t, rss, fds, procs))
        print(f"  t={t:6.0f}s  RSS {rss:7.1f} MiB  fds {fds:4d}", flush=True)

    def run(self) -> None:
        """Sample at once, then every interval, while the load runs (a
        sample due within a second of its end would race with it)."""
        while True:
            self.take()
            due = time.monotonic() - self.start_time + self.interval
            if due > self.until - 1 or self.stopping.wait(self.interval):
                return


# --------------------------------------------------------------------------
# Verdict, CSV, plot


def judge(
    mix: list[Kind],
    outcomes: dict[str, Outcome],
    samples: list[tuple[float, float, int, int]],
    warmup: float,
) -> list[tuple[str, bool, str]]:
    """The pass/fail checks: (name, passed, detail)."""
    checks = []
    for kind in mix:
        o = outcomes[kind.name]
        bad = {s: n for s, n in o.statuses.items() if s not in kind.expected}
        errors = dict(o.errors)
        if kind.cut:
            errors.pop("read", None)
        detail = f"{o.requests} requests, statuses {dict(sorted(o.statuses.items()))}"
        if o.errors:
            detail += f", socket errors {o.errors}"
        want = f"only {sorted(kind.expected)}"
        if kind.cut:
            want = f"cut mid-body or {sorted(kind.expected)}"
        checks.append(
            (
                f"{kind.name}: {want}",
                not bad and not errors,
                detail,
            )
        )
    after = [s for s in samples if s[0] >= warmup] or samples[-1:]
    first, last = after[0], after[-1]
    growth = (last[1] - first[1]) / first[1] * 100 if first[1] else 0.0
    checks.append(
        (
            "RSS growth after warm-up < 5 %",
            growth < 5.0,
            f"{first[1]:.1f} -> {last[1]:.1f} MiB ({growth:+.1f} %), "
            f"max {max(s[1] for s in after):.1f}",
        )
    )
    slack = max(8, int(first[2] * 0.10))
    checks.append(
        (
            "open fds flat after warm-up",
            last[2] <= first[2] + slack,
            f"{first[2]} -> {last[2]} (min {min(s[2] for s in after)}, "
            f"max {max(s[2] for s in after)}, slack {slack})",
        )
    )
    return checks


def read_csv(path: Path) -> list[tuple[float, float, int, int]]:
    """The samples :func:`write_csv` wrote."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        (
            float(r["seconds"]),
            float(r["rss_mib"]),
            int(r["open_fds"]),
            int(r["processes"]),
        )
        for r in rows
    ]


def write_csv(path: Path, samples: list[tuple[float, float, int, int]]) -> None:
    """One row per sample."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "rss_mib", "open_fds", "processes"])
        for t, rss, fds, procs in samples:
            w.writerow([f"{t:.1f}", f"{rss:.2f}", fds, procs])


def plot(
    path: Path,
    samples: list[tuple[float, float, int, int]],
    warmup: float,
    title: str,
) -> None:
    """RSS and open fds against time, the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [s[1] for s in samples], "o-", color="tab:blue", label="RSS (MiB)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)", color="tab:blue")
    ax.set_ylim(0, max(s[1] for s in samples) * 1.15)
    ax.axvspan(0, warmup, color="0.9", label="warm-up")
    ax2 = ax.twinx()
    ax2.plot(t, [s[2] for s in samples], "s-", color="tab:red", label="open fds")
    ax2.set_ylabel("open fds", color="tab:red")
    ax2.set_ylim(0, max(s[2] for s in samples) * 1.15)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------
# Main


def write_config(path: Path, nginx_port: int, py_port: int) -> None:
    """Routes: ``/build`` to nginx, ``/py`` to the Python upstream."""
    path.write_text(
        f"""
[[route]]
prefix = "/build"
name = "BUILD"
upstreams = ["http://127.0.0.1:{nginx_port}"]
token = "required"

[[route]]
prefix = "/py"
name = "PY"
upstreams = ["http://127.0.0.1:{py_port}"]
token = "required"
timeout = 10
"""
    )


def main(argv: list[str] | None = None) -> int:
    """Parse options, start everything, calibrate, soak, judge, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", default="10m", help="soak length (default 10m; e.g. 60s)"
    )
    parser.add_argument(
        "--warmup", default=None, help="warm-up inside the soak (default 1/3, ≤ 2m)"
    )
    parser.add_argument(
        "--interval", type=float, default=10.0, help="seconds per sample"
    )
    parser.add_argument(
        "--calibrate", type=float, default=10.0, help="seconds per pass"
    )
    parser.add_argument("--load", type=float, default=0.8, help="share of capacity")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--csv", default=None, help="samples (default $TMPDIR/metagateway-soak.csv)"
    )
    parser.add_argument("--png", default=None, help="plot (default next to the CSV)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--replot",
        metavar="TITLE",
        help="only plot the samples of --csv (an earlier run's) under TITLE",
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    duration = run._seconds(args.duration)
    warmup = run._seconds(args.warmup) if args.warmup else min(duration / 3, 120.0)
    if args.replot:
        samples = Path(args.csv or Path(tempfile.gettempdir()) / "metagateway-soak.csv")
        target = Path(args.png) if args.png else samples.with_suffix(".png")
        plot(target, read_csv(samples), warmup, args.replot)
        print(f"plot: {target}")
        return 0

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    tools = run.ensure_tools(os.geteuid() == 0)
    lab = run.Lab(keep=args.keep)
    csv_path = Path(args.csv or Path(tempfile.gettempdir()) / "metagateway-soak.csv")
    png_path = Path(args.png) if args.png else csv_path.with_suffix(".png")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        upstream = run.start_upstream(lab, tools["nginx"])
        py_port = lab.free_port()
        py = lab.start(
            "pyupstream",
            [sys.executable, __file__, "--serve-upstream", str(py_port)],
            env=run.clean_env(),
        )
        lab.wait_ready("pyupstream", py, py_port)
        accounts = lab.dir / "accounts"
        password = run.write_account(accounts)
        config = lab.dir / "routes.toml"
        write_config(config, upstream.port, py_port)
        port = lab.free_port()
        argv = [
            sys.executable,
            *run.gateway_args(port, accounts, "--config", str(config)),
        ]
        if args.workers > 1:
            argv += ["--workers", str(args.workers)]
        env = run.clean_env(GATEWAY_JWT_SECRET=secrets.token_hex(32))
        daemon = lab.start("soak", argv, env=env, cwd=run.ROOT)
        lab.wait_ready("soak", daemon, port)
        token = run.login(port, password)
        mix = kinds(token, password)
        print(
            f"soak: {args.duration} at {args.load:.0%} of capacity, warm-up "
            f"{warmup:.0f} s, logs in {lab.dir}; load average {load_before}",
            flush=True,
        )
        print(f"calibrating ({2 * args.calibrate:.0f} s) ...", flush=True)
        capacity = calibrate(lab, tools["wrk"], mix, port, args.calibrate, args.load)
        for kind in mix:
            print(
                f"  {kind.name:<9} capacity {capacity[kind.name]:8.1f}/s"
                f"  delay {kind.delay_ms:6.2f} ms x {kind.connections} conns",
                flush=True,
            )
        print(f"soaking {duration:.0f} s ...", flush=True)
        sampler = Sampler(daemon.pid, args.interval, duration)
        sampler.start()
        outcomes = drive(lab, tools["wrk"], mix, port, duration)
        sampler.stopping.set()
        sampler.join()
        time.sleep(2)
        idle_rss, idle_fds, _ = tree_sample(daemon.pid)
        print(
            f"  2 s after the load: RSS {idle_rss:.1f} MiB, fds {idle_fds} "
            "(reported, not judged: the upstream pool keeps idle connections)",
            flush=True,
        )
        checks = judge(mix, outcomes, sampler.samples, warmup)
        text = (lab.dir / "soak.log").read_text(errors="replace")
        crashes = text.count("Traceback") + text.count("Unhandled Error")
        checks.append(("no traceback in the daemon's log", not crashes, f"{crashes}"))
        print("\nper kind (answers/s over the soak):")
        for kind in mix:
            o = outcomes[kind.name]
            aim = (
                f"aimed at {args.load * capacity[kind.name]:.1f}"
                if kind.fixed_delay is None
                else "paced"
            )
            cut = f", {o.errors.get('read', 0)} cut" if kind.cut else ""
            print(f"  {kind.name:<9} {o.rate:8.1f}/s  ({aim}{cut})")
        total = sum(o.rate for o in outcomes.values())
        print(f"  all       {total:8.1f}/s")
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average before {load_before}, after {load_after}\n")
        passed = all(ok for _, ok, _ in checks)
        for name, ok, detail in checks:
            print(f"  [{'pass' if ok else 'FAIL'}] {name}: {detail}")
        print(f"\nsoak {'PASSED' if passed else 'FAILED'}")
        write_csv(csv_path, sampler.samples)
        title = (
            f"metagateway soak {time.strftime('%Y-%m-%d %H:%M')}, {duration:.0f} s, "
            f"{total:.0f} req/s mixed, {'pass' if passed else 'FAIL'}"
        )
        try:
            plot(png_path, sampler.samples, warmup, title)
            print(f"samples: {csv_path}\nplot:    {png_path}")
        except ImportError:
            print(f"samples: {csv_path}\nno plot: matplotlib missing (.[bench])")
        return 0 if passed else 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        lab.close()


if __name__ == "__main__":
    sys.exit(main())
