"""
Side-by-side benchmark of metagateway against nginx and other Twisted proxies.

Run from a clone of the repository::

    python bench/run.py                          # defaults: 3 rounds of 5 s
    python bench/run.py --duration 10s --rounds 5
    python bench/run.py --only nginx-proxy,stock,bare-1,mg-1

In one run on one machine this starts, all on 127.0.0.1:

- an nginx upstream serving ``/small`` (a short fixed body) and ``/big``
  (a 1 MiB file),
- nginx as a reverse proxy with keep-alive upstream connections,
- Twisted's stock ``ReverseProxyResource`` (``bench/stockproxy.py``),
- a bare Agent + persistent pool proxy (``bench/bareproxy.py``), as one
  process and as N processes sharing one listening socket,
- metagateway under ``twistd``, one process and ``--workers N``, with a
  verified bearer token on every ``GET /build/small``,
- under PyPy too (one process and ``--workers N``), in an environment
  ``bench/pypyenv.py`` prepares from Debian's ``pypy3``,

then drives each with wrk (50 connections on the small body, 8 on the 1 MiB
body), rotating the order over the rounds and reversing it every other
round, and prints one table of medians
with ratios to nginx-as-proxy and to the stock Twisted proxy, followed by the
targets of issue 6 marked pass or fail. It reports; it never asserts, and it
exits 0 whenever the run itself completed.

Every process it starts is stopped on the way out, Ctrl-C included. It needs
Debian's ``wrk`` and ``nginx``; it installs them with apt-get when run as
root, and otherwise says how.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

#: The small upstream body (nginx ``return``), and the size of the big one.
SMALL_BODY = "metagateway benchmark: a small fixed upstream body.\n"
BIG_SIZE = 1024 * 1024

#: The PyPy rows warm up this many times ``--warmup`` (``--pypy-warmup``).
PYPY_WARMUP = 5.0

#: ``PYPY_GC_NURSERY`` for every child (``--pypy-nursery``; CPython ignores
#: it). PyPy sizes its nursery from the L2 cache (1 MiB here): a request
#: allocates enough that a 16 MB nursery saves about a third of the CPU
#: per request (docs/performance.rst, "PyPy").
PYPY_NURSERY = "16MB"
PYPY_ENV: dict[str, str] = {}

#: wrk connections per workload, as issue 6 fixes them.
WORKLOADS = {"small": 50, "1MiB": 8}

#: Runs twistd from any interpreter, so PyPy needs no twistd script of its own.
TWISTD = (
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
)

#: Prints an interpreter's name and version, and its Twisted's.
INTERPRETER = (
    "import platform, sys\n"
    "try:\n    import twisted; tw = 'Twisted ' + twisted.__version__\n"
    "except Exception:\n    tw = 'no Twisted'\n"
    "impl = platform.python_implementation()\n"
    "pypy = getattr(sys, 'pypy_version_info', None)\n"
    "if pypy: impl += ' %d.%d.%d' % pypy[:3]\n"
    "print(impl, platform.python_version() + ',', tw)"
)

USERNAME = "benchuser"

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Unavailable(Exception):
    """A row that cannot be measured in this run; the message says why."""


# --------------------------------------------------------------------------
# Processes


@dataclass
class Server:
    """One thing under test, started by this script and listening on a port.

    :ivar key: short name, also the name of its log file.
    :ivar port: the loopback port it listens on.
    :ivar proc: the process we started (the root of its process tree).
    :ivar paths: request path per workload.
    :ivar headers: extra wrk ``-H`` headers.
    """

    key: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    paths: dict[str, str] = field(
        default_factory=lambda: {"small": "/small", "1MiB": "/big"}
    )
    headers: list[str] = field(default_factory=list)
    #: one ``--metrics-listen`` port per worker (multi-process gateway rows).
    metrics_ports: list[int] = field(default_factory=list)

    def url(self, workload: str) -> str:
        """The URL wrk drives for ``workload``."""
        return f"http://127.0.0.1:{self.port}{self.paths[workload]}"


class Lab:
    """Owns the temporary directory, the ports and every process started.

    :param keep: leave the temporary directory behind for inspection.
    """

    def __init__(self, keep: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="metagateway-bench-"))
        # nginx workers run as nobody when the master is root: let them read.
        self.dir.chmod(0o755)
        self.keep = keep
        self.procs: list[subprocess.Popen[bytes]] = []

    def free_port(self) -> int:
        """A currently unused loopback port."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def free_ports(self, count: int) -> int:
        """The first of ``count`` consecutive unused loopback ports."""
        for _ in range(100):
            first = self.free_port()
            try:
                for offset in range(1, count):
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", first + offset))
            except OSError:
                continue
            return first
        raise Unavailable(f"no {count} consecutive free ports")

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session, output to ``DIR/name.log``."""
        log = open(self.dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 1) -> str:
        """The last non-empty lines of a started process's output."""
        try:
            text = (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        kept = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:])

    def wait_ready(self, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
        """Wait until ``port`` accepts connections.

        :raises Unavailable: the process exited first, or 20 s went by.
        """
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Unavailable(
                    f"exited with status {proc.returncode}: {self.log_tail(name, 2)}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise Unavailable(f"port {port} not ready after 20 s: {self.log_tail(name)}")

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one started process and everything in its session."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Leftover children (a worker of a crashed parent) die with the group.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()

    def close(self) -> None:
        """Stop every process started, newest first; remove the directory.

        Called as the script ends: from here on SIGINT and SIGTERM are
        ignored, so that a second Ctrl-C cannot leave servers running."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def _signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group we created; ignore one already gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------
# /proc accounting


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants, from ``/proc``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat:
                parents[int(entry)] = int(stat[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree.extend(frontier)
    return tree


def _read_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(root: int) -> float:
    """CPU time (user + system, reaped children included) of a process tree."""
    ticks = 0
    for pid in process_tree(root):
        stat = _read_stat(pid)
        if stat:
            # utime, stime, cutime, cstime: fields 14-17 of proc(5).
            ticks += sum(int(v) for v in stat[11:15])
    return ticks / CLK_TCK


def peak_rss_mib(root: int) -> tuple[float, int]:
    """Largest VmHWM of any process in the tree (MiB), and the tree's size."""
    peak, count = 0, 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
                        count += 1
        except OSError:
            pass
    return peak / 1024, count


# --------------------------------------------------------------------------
# Tools


def find_tool(name: str) -> str | None:
    """``name`` on PATH, or in the sbin directories a non-root PATH lacks."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def ensure_tools(install: bool) -> dict[str, str]:
    """Find wrk and nginx, installing Debian's packages if root and allowed.

    :raises SystemExit: a tool is missing and cannot be installed here.
    """
    missing = [name for name in ("wrk", "nginx") if not find_tool(name)]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], env=env, check=False
        )
        missing = [name for name in missing if not find_tool(name)]
    if missing:
        raise SystemExit(
            f"bench: {' and '.join(missing)} not found. Install them with\n"
            f"    sudo apt-get update && sudo apt-get install -y {' '.join(missing)}\n"
            "(Debian/Ubuntu), then run this again."
        )
    return {name: str(find_tool(name)) for name in ("wrk", "nginx")}


def version_of(argv: list[str]) -> str:
    """First line a ``--version``-style command prints, or ``?``."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def python_check(python: str, code: str) -> str | None:
    """Run ``code`` under ``python`` from the repository root.

    :returns: None if it succeeded, else the last line of its error output.
    """
    env = clean_env()
    try:
        out = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if out.returncode == 0:
        return None
    lines = out.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {out.returncode}"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child: ours without gateway settings, plus
    ``extra``, and the repository on ``PYTHONPATH`` (so its code and its
    twistd plugin are the ones measured)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METAGATEWAY_", "GATEWAY_", "R2_", "GITHUB_"))
        and not k.endswith("_SERVICE_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(PYPY_ENV)
    env.update(extra)
    return env


# --------------------------------------------------------------------------
# The things under test


def nginx_conf(
    lab: Lab, name: str, port: int, server_body: str, http_extra: str = ""
) -> Path:
    """Write an nginx configuration of our own into the lab directory."""
    d = lab.dir / name
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(
        f"""
worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {d}/client_temp;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    {http_extra}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        {server_body}
    }}
}}
"""
    )
    return conf


def start_nginx(
    lab: Lab, nginx: str, name: str, conf: Path, port: int
) -> subprocess.Popen[bytes]:
    """Start nginx in the foreground with our configuration and prefix."""
    d = conf.parent
    proc = lab.start(
        name, [nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")]
    )
    lab.wait_ready(name, proc, port)
    return proc


def start_upstream(lab: Lab, nginx: str) -> Server:
    """The nginx upstream: ``/small`` and the 1 MiB ``/big``."""
    www = lab.dir / "www"
    www.mkdir()
    (www / "big").write_bytes(os.urandom(BIG_SIZE))
    (www / "big").chmod(0o644)
    www.chmod(0o755)
    port = lab.free_port()
    conf = nginx_conf(
        lab,
        "upstream",
        port,
        f"""
        location = /small {{ default_type text/plain; return 200 {json.dumps(SMALL_BODY)}; }}
        location = /big {{ root {www}; }}
        """,
    )
    server = Server("nginx-direct", port)
    server.proc = start_nginx(lab, nginx, "upstream", conf, port)
    return server


def start_nginx_proxy(lab: Lab, nginx: str, upstream: Server) -> Server:
    """nginx as a reverse proxy with keep-alive upstream connections."""
    port = lab.free_port()
    conf = nginx_conf(
        lab,
        "nginx-proxy",
        port,
        """
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }
        """,
        http_extra=f"upstream up {{ server 127.0.0.1:{upstream.port}; keepalive 64; }}",
    )
    server = Server("nginx-proxy", port)
    server.proc = start_nginx(lab, nginx, "nginx-proxy", conf, port)
    return server


def start_stock(lab: Lab, python: str, upstream: Server) -> Server:
    """Twisted's stock ``ReverseProxyResource``."""
    server = Server("stock", lab.free_port())
    server.proc = lab.start(
        "stock",
        [
            python,
            str(BENCH / "stockproxy.py"),
            "--port",
            str(server.port),
            "--upstream-port",
            str(upstream.port),
            "--log",
            str(lab.dir / "stock-access.log"),
        ],
        env=clean_env(),
    )
    lab.wait_ready("stock", server.proc, server.port)
    return server


def start_bare(
    lab: Lab, python: str, upstream: Server, processes: int, key: str
) -> Server:
    """The bare Agent + pool proxy, ``processes`` sharing one socket."""
    err = python_check(python, "import twisted.web.client")
    if err:
        raise Unavailable(f"{python} cannot import Twisted ({err})")
    server = Server(key, lab.free_port())
    server.proc = lab.start(
        key,
        [
            python,
            str(BENCH / "bareproxy.py"),
            "--port",
            str(server.port),
            "--upstream",
            f"http://127.0.0.1:{upstream.port}",
            "--processes",
            str(processes),
        ],
        env=clean_env(),
    )
    lab.wait_ready(key, server.proc, server.port)
    return server


def gateway_args(port: int, accounts: Path, *options: str) -> list[str]:
    """The interpreter's arguments that run the daemon in the foreground on
    ``port`` (loopback) with the accounts directory ``accounts``, then
    ``options``."""
    return [
        "-c",
        TWISTD,
        "-n",
        "--pidfile=",
        "metagateway",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--accounts-dir",
        str(accounts),
        *options,
    ]


def login(port: int, password: str) -> str:
    """Log the benchmark's user in at the gateway on ``port``; its token.

    :raises Unavailable: when the answer holds no token.
    """
    status, body = http(
        "POST",
        f"http://127.0.0.1:{port}/auth/login",
        json.dumps({"username": USERNAME, "password": password}).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        token: str = json.loads(body)["token"]
    except (ValueError, KeyError, TypeError):
        raise Unavailable(f"login answered {status}: {body[:120]!r}") from None
    return token


def write_account(accounts: Path) -> str:
    """Create ``accounts/auth/admins/benchuser.json``; return the password."""
    password = secrets.token_urlsafe(18)
    salt = secrets.token_hex(16)
    digest = hashlib.sha256((salt + password).encode("utf-8")).digest()
    record = {
        "username": USERNAME,
        "salt": salt,
        "hash": base64.b64encode(digest).decode("ascii"),
        "role": "admin",
    }
    admins = accounts / "auth" / "admins"
    admins.mkdir(parents=True, exist_ok=True)
    (admins / f"{USERNAME}.json").write_text(json.dumps(record))
    return password


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request over loopback, ignoring any proxy settings."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 URLs)
        url, data=body, method=method, headers=headers or {}
    )
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


#: ``--assertion-key``: the key metagateway rows sign assertions with.
ASSERTION_KEY: str | None = None


def start_metagateway(
    lab: Lab, python: str, upstream: Server, workers: int, key: str
) -> Server:
    """metagateway under twistd, logged in, with a token checked to work.

    :raises Unavailable: the gateway cannot be imported, rejects an option,
        will not start, or does not answer the benchmark request with 200.
    """
    err = python_check(python, "import metagateway.daemon.tap")
    if err:
        raise Unavailable(
            f"cannot import metagateway.daemon.tap under {Path(python).name} ({err})"
        )
    accounts = lab.dir / f"{key}-accounts"
    password = write_account(accounts)
    server = Server(key, lab.free_port())
    server.paths = {"small": "/build/small", "1MiB": "/build/big"}
    # The default settings (issue 19): the text access log, one line per
    # request, written by twistd -n to the row's log file.
    argv = [python, *gateway_args(server.port, accounts)]
    if workers > 1:
        # Each worker serves its own metrics (worker k on base + k): the
        # per-worker request counts are read after every run.
        base = lab.free_ports(workers)
        server.metrics_ports = [base + k for k in range(workers)]
        argv += [
            "--workers",
            str(workers),
            "--metrics-listen",
            f"tcp:{base}:interface=127.0.0.1",
        ]
    env = clean_env(
        GATEWAY_JWT_SECRET=secrets.token_hex(32),
        BUILD_SERVICE_URL=f"http://127.0.0.1:{upstream.port}",
    )
    if ASSERTION_KEY:
        # Every proxied request then carries a signed X-Gateway-Assertion.
        env["GATEWAY_ASSERTION_KEY_FILE"] = ASSERTION_KEY
    server.proc = lab.start(key, argv, env=env, cwd=ROOT)
    try:
        lab.wait_ready(key, server.proc, server.port)
    except Unavailable as e:
        tail = lab.log_tail(key, 3)
        if workers > 1 and "workers" in tail:
            raise Unavailable(
                f"n/a: twistd rejected --workers ({lab.log_tail(key)})"
            ) from e
        raise
    token = login(server.port, password)
    server.headers = [f"Authorization: Bearer {token}"]
    return server


def check_answers(server: Server) -> None:
    """One request per workload must get 200 and the upstream's exact body.

    :raises Unavailable: it did not.
    """
    headers = dict(h.split(": ", 1) for h in server.headers)
    for workload, size in (("small", len(SMALL_BODY)), ("1MiB", BIG_SIZE)):
        status, body = http("GET", server.url(workload), headers=headers)
        if status != 200 or len(body) != size:
            raise Unavailable(
                f"GET {server.paths[workload]} answered {status} with "
                f"{len(body)} bytes: {body[:100]!r}"
            )


# --------------------------------------------------------------------------
# wrk


@dataclass
class Sample:
    """One wrk run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s: float
    requests: int
    non2xx: int
    socket_errors: int
    #: requests each worker answered during the run (multi-process gateways).
    workers: list[int] = field(default_factory=list)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float:
    """``'370.00us'`` -> 0.37 (milliseconds)."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> tuple[float, float, float, int, int, int]:
    """requests/s, p50 ms, p99 ms, requests, non-2xx/3xx, socket errors."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return (
        rps,
        _ms(p50.group(1)) if p50 else float("nan"),
        _ms(p99.group(1)) if p99 else float("nan"),
        int(total.group(1)) if total else 0,
        int(non2xx.group(1)) if non2xx else 0,
        sum(int(g) for g in sock.groups()) if sock else 0,
    )


def run_wrk(wrk: str, server: Server, workload: str, duration: str) -> Sample:
    """Drive ``server`` with wrk for ``duration``; account its CPU."""
    conns = WORKLOADS[workload]
    argv = [
        wrk,
        "-t",
        str(min(2, conns)),
        "-c",
        str(conns),
        "-d",
        duration,
        "--latency",
    ]
    for header in server.headers:
        argv += ["-H", header]
    argv.append(server.url(workload))
    assert server.proc is not None
    counts = worker_requests(server)
    before = cpu_seconds(server.proc.pid)
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=_seconds(duration) + 60
    )
    after = cpu_seconds(server.proc.pid)
    if out.returncode != 0 or "Requests/sec" not in out.stdout:
        raise RuntimeError(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
    rps, p50, p99, total, non2xx, sock = parse_wrk(out.stdout)
    per_worker = [b - a for a, b in zip(counts, worker_requests(server))]
    return Sample(rps, p50, p99, after - before, total, non2xx, sock, per_worker)


def worker_requests(server: Server) -> list[int]:
    """``metagateway_requests_total`` summed per worker, from each worker's
    ``/metrics`` (empty for a server without metrics ports)."""
    counts = []
    for port in server.metrics_ports:
        status, body = http("GET", f"http://127.0.0.1:{port}/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics on port {port} answered {status}")
        counts.append(
            int(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in body.decode().splitlines()
                    if line.startswith("metagateway_requests_total{")
                )
            )
        )
    return counts


def worker_shares(samples: list[Sample]) -> list[int]:
    """Requests per worker summed over ``samples`` (empty without counts)."""
    totals: list[int] = []
    for sample in samples:
        if sample.workers:
            totals = [
                a + b
                for a, b in zip(totals or [0] * len(sample.workers), sample.workers)
            ]
    return totals


def _shares(counts: list[int]) -> str:
    """``12034 (51 %) / 11560 (49 %)``."""
    total = sum(counts) or 1
    return " / ".join(f"{c} ({100 * c / total:.0f} %)" for c in counts)


def _seconds(duration: str) -> float:
    """wrk duration (``5s``, ``2m``, ``1h`` or plain seconds) in seconds."""
    m = re.fullmatch(r"([\d.]+)([smh]?)", duration)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {duration!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# --------------------------------------------------------------------------
# The run


@dataclass
class Row:
    """Everything known about one thing under test at the end of the run."""

    key: str
    label: str
    server: Server | None = None
    note: str = ""
    samples: dict[str, list[Sample]] = field(
        default_factory=lambda: {w: [] for w in WORKLOADS}
    )
    rss_mib: float = 0.0
    processes: int = 0

    def median(self, workload: str, attr: str) -> float | None:
        """Median of one measure over the rounds, or None if none ran."""
        values = [getattr(s, attr) for s in self.samples[workload]]
        return statistics.median(values) if values else None

    def errors(self, workload: str) -> tuple[int, int]:
        """Non-2xx and socket errors summed over the rounds."""
        s = self.samples[workload]
        return sum(x.non2xx for x in s), sum(x.socket_errors for x in s)


Starter = Callable[[Lab, Server], Server]


def plan(args: argparse.Namespace, nginx: str) -> list[tuple[str, str, Starter]]:
    """What to start: (row key, row label, starter) in table order.

    A starter gets the lab and the upstream, and returns the running server
    or raises ``Unavailable``.
    """
    py, n = sys.executable, args.workers
    pypy, why = args.pypy_python, args.pypy_reason

    def bare(python: str | None, procs: int, key: str) -> Starter:
        if python is None:
            return _unavailable(why)
        return lambda lab, up: start_bare(lab, python, up, procs, key)

    def gateway(python: str | None, workers: int, key: str) -> Starter:
        if python is None:
            return _unavailable(why)
        return lambda lab, up: start_metagateway(lab, python, up, workers, key)

    items: list[tuple[str, str, Starter]] = [
        ("nginx-direct", "nginx serving directly", lambda lab, up: up),
        (
            "nginx-proxy",
            "nginx as reverse proxy",
            lambda lab, up: start_nginx_proxy(lab, nginx, up),
        ),
        (
            "stock",
            "Twisted ReverseProxyResource",
            lambda lab, up: start_stock(lab, py, up),
        ),
        ("bare-1", "bare Agent+pool, 1 proc", bare(py, 1, "bare-1")),
        (f"bare-{n}", f"bare Agent+pool, {n} procs", bare(py, n, f"bare-{n}")),
        ("mg-1", "metagateway, 1 proc", gateway(py, 1, "mg-1")),
        (f"mg-{n}", f"metagateway --workers {n}", gateway(py, n, f"mg-{n}")),
        ("pypy-bare-1", "bare Agent+pool, PyPy", bare(pypy, 1, "pypy-bare-1")),
        ("pypy-mg-1", "metagateway, PyPy", gateway(pypy, 1, "pypy-mg-1")),
        (
            f"pypy-mg-{n}",
            f"metagateway, PyPy --workers {n}",
            gateway(pypy, n, f"pypy-mg-{n}"),
        ),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        items = [i for i in items if i[0] in wanted]
    return items


def resolve_pypy(args: argparse.Namespace) -> tuple[str | None, str]:
    """The interpreter for the PyPy rows, or None and why there is none.

    ``--pypy auto`` prepares (or reuses) the checkout's PyPy environment
    with ``bench/pypyenv.py``, only when a PyPy row is asked for.
    """
    if not args.pypy:
        return None, "skipped (--pypy '')"
    if args.pypy != "auto":
        found = shutil.which(args.pypy)
        return (found, "") if found else (None, f"no {args.pypy} on PATH")
    if args.only and not any(k.startswith("pypy") for k in args.only.split(",")):
        return None, "not asked for"
    sys.path.insert(0, str(BENCH))
    import pypyenv  # beside this file

    pypy = pypyenv.find_pypy("pypy3", install=not args.no_install)
    if pypy is None:
        return None, "no pypy3 on PATH (apt-get install pypy3 pypy3-venv)"
    try:
        return str(pypyenv.prepare(pypy)), ""
    except pypyenv.NotPrepared as e:
        return None, str(e)


def _unavailable(reason: str) -> Starter:
    """A starter for a row that cannot run here."""

    def starter(lab: Lab, upstream: Server) -> Server:
        raise Unavailable(reason)

    return starter


def start_all(
    lab: Lab, items: list[tuple[str, str, Starter]], upstream: Server
) -> list[Row]:
    """Start everything in ``items``; a failure becomes that row's note."""
    rows = []
    for key, label, starter in items:
        row = Row(key, label)
        print(f"  starting {label} ...", flush=True)
        started = len(lab.procs)
        try:
            server = starter(lab, upstream)
            check_answers(server)
            row.server = server
        except Unavailable as e:
            for proc in lab.procs[started:]:
                lab.stop(proc)  # a broken row must not eat CPU
            reason = str(e)
            row.note = (
                reason if reason.startswith("n/a") else f"not available: {reason}"
            )
            if key.startswith("pypy-mg-") and "import" in reason:
                row.note += (
                    " (install the project for that interpreter: see bench/pypyenv.py)"
                )
            print(f"    {row.note}", flush=True)
        rows.append(row)
    return rows


def warmup_for(key: str, args: argparse.Namespace) -> str:
    """The wrk duration of row ``key``'s warm-up, per workload.

    PyPy's JIT needs longer before it runs at full speed, and in every
    process: each of N workers sees 1/N of the warm-up's requests.
    """
    if not key.startswith("pypy"):
        return str(args.warmup)
    procs = args.workers if key == f"pypy-mg-{args.workers}" else 1
    return f"{_seconds(args.warmup) * args.pypy_warmup * procs:g}s"


def measure(rows: list[Row], wrk: str, args: argparse.Namespace) -> None:
    """Warm up once, then run the rounds, the order rotated each round and
    reversed every other round."""
    live = [r for r in rows if r.server]
    if not live:
        return
    per_run = _seconds(args.duration) + args.pause + 0.5
    total = len(WORKLOADS) * sum(
        args.rounds * per_run + _seconds(warmup_for(r.key, args)) for r in live
    )
    print(f"measuring {len(live)} servers, about {total / 60:.0f} min", flush=True)
    print(
        f"warming up ({args.warmup} per workload, PyPy rows "
        f"{args.pypy_warmup:g}× that per process) ...",
        flush=True,
    )
    for row in live:
        warmup = warmup_for(row.key, args)
        for workload in WORKLOADS:
            try:
                run_wrk(wrk, row.server, workload, warmup)  # type: ignore[arg-type]
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"  {row.key:<14} {workload:<5} {e}", flush=True)
    for rnd in range(args.rounds):
        shift = rnd % len(live)
        order = live[shift:] + live[:shift]
        if rnd % 2:
            # Every other round backwards: each row then runs both after and
            # before its neighbours (rotation alone keeps their order).
            order.reverse()
        print(
            f"round {rnd + 1}/{args.rounds}: {', '.join(r.key for r in order)}",
            flush=True,
        )
        for row in order:
            for workload in WORKLOADS:
                time.sleep(args.pause)
                try:
                    sample = run_wrk(wrk, row.server, workload, args.duration)  # type: ignore[arg-type]
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"  {row.key:<14} {workload:<5} {e}", flush=True)
                    continue
                row.samples[workload].append(sample)
                print(
                    f"  {row.key:<14} {workload:<5} {sample.rps:>10.0f} req/s"
                    f"  p99 {sample.p99_ms:7.2f} ms  cpu {sample.cpu_s:5.2f} s"
                    + (
                        f"  errors {sample.non2xx}+{sample.socket_errors}"
                        if sample.non2xx or sample.socket_errors
                        else ""
                    )
                    + (
                        f"  workers {_shares(sample.workers)}" if sample.workers else ""
                    ),
                    flush=True,
                )
    for row in live:
        row.rss_mib, row.processes = peak_rss_mib(row.server.proc.pid)  # type: ignore[union-attr]


def _fmt(value: float | None, spec: str) -> str:
    """Format a possibly missing number."""
    return "-" if value is None else format(value, spec)


def _ratio(value: float, reference: float | None) -> str:
    """``value / reference`` as ``1.23×``, or ``-`` without a reference."""
    return f"{value / reference:.2f}×" if reference else "-"


def print_table(rows: list[Row]) -> None:
    """One table of medians, both workloads, with the two ratio columns."""
    by_key = {r.key: r for r in rows}
    head = (
        f"{'':<30} {'body':<5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU s':>6}"
        f" {'CPU µs/req':>10} {'RSS MiB':>7} {'procs':>5} {'non2xx':>6} {'sockerr':>7}"
        f" {'×nginx-proxy':>12} {'×stock':>7}"
    )
    print()
    print(head)
    print("-" * len(head))
    for workload in WORKLOADS:
        ref_nginx = by_key.get("nginx-proxy")
        ref_stock = by_key.get("stock")
        nginx_rps = ref_nginx.median(workload, "rps") if ref_nginx else None
        stock_rps = ref_stock.median(workload, "rps") if ref_stock else None
        for row in rows:
            if not row.samples[workload]:
                if workload == "small":
                    print(f"{row.label:<30} {row.note or 'not measured'}")
                continue
            rps = row.median(workload, "rps")
            cpu = row.median(workload, "cpu_s")
            reqs = row.median(workload, "requests")
            non2xx, sock = row.errors(workload)
            print(
                f"{row.label:<30} {workload:<5} {rps:>8.0f}"
                f" {_fmt(row.median(workload, 'p50_ms'), '7.2f')}"
                f" {_fmt(row.median(workload, 'p99_ms'), '7.2f')}"
                f" {_fmt(cpu, '6.2f')}"
                f" {_fmt(cpu * 1e6 / reqs if cpu is not None and reqs else None, '10.0f')}"
                f" {row.rss_mib:>7.1f} {row.processes:>5} {non2xx:>6} {sock:>7}"
                f" {_ratio(rps, nginx_rps):>12} {_ratio(rps, stock_rps):>7}"
            )
        print()
    for row in rows:
        for workload in WORKLOADS:
            counts = worker_shares(row.samples[workload])
            if counts:
                print(
                    f"requests per worker, {row.label}, {workload} (all rounds): "
                    + _shares(counts)
                )


def print_checks(rows: list[Row], workers: int) -> list[dict[str, object]]:
    """The targets (issues 6 and 19), each marked pass, FAIL or n/a.
    Reporting only."""
    by_key = {r.key: r for r in rows}

    def rps(key: str, workload: str = "small") -> float | None:
        row = by_key.get(key)
        return row.median(workload, "rps") if row else None

    def why(key: str) -> str:
        row = by_key.get(key)
        return (
            row.note.replace("n/a: ", "", 1)
            if row and row.note
            else f"{key} not measured"
        )

    checks: list[dict[str, object]] = []

    def ratio_check(
        name: str, key: str, ref: str, target: float, workload: str = "small"
    ) -> None:
        a, b = rps(key, workload), rps(ref, workload)
        if a is None or b is None:
            checks.append(
                {
                    "name": name,
                    "result": "n/a",
                    "detail": why(key if a is None else ref),
                }
            )
        else:
            checks.append(
                {
                    "name": name,
                    "result": "pass" if a >= target * b else "FAIL",
                    "detail": f"{a / b:.2f}× (target ≥ {target}×)",
                }
            )

    ratio_check("metagateway 1 proc ≥ 1.5× stock proxy (small)", "mg-1", "stock", 1.5)
    # Issue 19's targets (issue 6 had 0.9×, 0.9× and 0.4×).
    ratio_check(
        "metagateway 1 proc, default settings ≥ 1.0× bare proxy 1 proc (small)",
        "mg-1",
        "bare-1",
        1.0,
    )
    mg_n, bare_n = by_key.get(f"mg-{workers}"), by_key.get(f"bare-{workers}")
    name = f"metagateway --workers {workers} ≥ 0.95× bare proxy {workers} procs, every round (small)"
    if mg_n and bare_n and mg_n.samples["small"] and bare_n.samples["small"]:
        ratios = [
            a.rps / b.rps
            for a, b in zip(mg_n.samples["small"], bare_n.samples["small"])
            if b.rps
        ]
        checks.append(
            {
                "name": name,
                "result": "pass" if ratios and min(ratios) >= 0.95 else "FAIL",
                "detail": ", ".join(f"{r:.2f}×" for r in ratios)
                + " by round (target ≥ 0.95× each)",
            }
        )
    else:
        checks.append(
            {
                "name": name,
                "result": "n/a",
                "detail": why(f"mg-{workers}" if not mg_n else f"bare-{workers}"),
            }
        )
    ratio_check(
        "metagateway 1 proc 1 MiB ≥ 0.5× nginx-proxy",
        "mg-1",
        "nginx-proxy",
        0.5,
        "1MiB",
    )

    # Issue 19: the best metagateway configuration, CPython or PyPy.
    best = max(
        (
            k
            for k in ("mg-1", f"mg-{workers}", "pypy-mg-1", f"pypy-mg-{workers}")
            if rps(k) is not None
        ),
        key=lambda k: rps(k) or 0.0,
        default=None,
    )
    ratio_check(
        f"best metagateway ({best or 'none'}) ≥ 0.30× nginx-proxy (small)",
        best or "mg-1",
        "nginx-proxy",
        0.30,
    )

    for key in (f"mg-{workers}", f"pypy-mg-{workers}"):
        row = by_key.get(key)
        counts = worker_shares(row.samples["small"]) if row else []
        if workers > 1 and (counts or key.startswith("mg-")):
            low = min(counts) / (sum(counts) or 1) if counts else None
            checks.append(
                {
                    "name": f"{key}: no worker below 35 % of the requests (small)",
                    "result": "n/a"
                    if low is None
                    else ("pass" if low >= 0.35 * 2 / workers else "FAIL"),
                    "detail": _shares(counts) if counts else why(key),
                }
            )

    mg, stock = by_key.get("mg-1"), by_key.get("stock")
    mg99 = mg.median("small", "p99_ms") if mg else None
    st99 = stock.median("small", "p99_ms") if stock else None
    if mg99 is None or st99 is None:
        checks.append(
            {
                "name": "metagateway p99 (50 conns) ≤ stock proxy's",
                "result": "n/a",
                "detail": why("mg-1" if mg99 is None else "stock"),
            }
        )
    else:
        checks.append(
            {
                "name": "metagateway p99 (50 conns) ≤ stock proxy's",
                "result": "pass" if mg99 <= st99 else "FAIL",
                "detail": f"{mg99:.2f} ms vs {st99:.2f} ms",
            }
        )

    gateways = [r for r in rows if "mg-" in r.key]
    measured = [r for r in gateways if any(r.samples.values())]
    if not measured:
        checks.append(
            {
                "name": "metagateway peak RSS ≤ 80 MiB per process",
                "result": "n/a",
                "detail": why("mg-1"),
            }
        )
        checks.append(
            {
                "name": "metagateway zero non-2xx and socket errors",
                "result": "n/a",
                "detail": why("mg-1"),
            }
        )
    else:
        # The memory target is CPython's; PyPy's JIT is shown, not judged.
        judged = [r for r in measured if not r.key.startswith("pypy")]
        worst = max(judged, key=lambda r: r.rss_mib) if judged else None
        checks.append(
            {
                "name": "metagateway peak RSS ≤ 80 MiB per process (CPython)",
                "result": "n/a"
                if worst is None
                else ("pass" if worst.rss_mib <= 80 else "FAIL"),
                "detail": ", ".join(f"{r.key} {r.rss_mib:.1f} MiB" for r in measured),
            }
        )
        errs = {r.key: [sum(r.errors(w)) for w in WORKLOADS] for r in measured}
        total = sum(sum(v) for v in errs.values())
        checks.append(
            {
                "name": "metagateway zero non-2xx and socket errors",
                "result": "pass" if total == 0 else "FAIL",
                "detail": ", ".join(f"{k} {sum(v)}" for k, v in errs.items()),
            }
        )

    print("targets (reported, not asserted; ratios move ±10 % between runs):")
    for c in checks:
        print(f"  [{c['result']:^4}] {c['name']}: {c['detail']}")
    return checks


def write_json(
    path: str, rows: list[Row], checks: list[dict[str, object]], info: dict[str, str]
) -> None:
    """Every sample of the run, for docs or later comparison."""
    data = {
        "info": info,
        "rows": [
            {
                "key": r.key,
                "label": r.label,
                "note": r.note,
                "rss_mib": r.rss_mib,
                "processes": r.processes,
                "samples": {w: [vars(s) for s in r.samples[w]] for w in WORKLOADS},
            }
            for r in rows
        ],
        "checks": checks,
    }
    Path(path).write_text(json.dumps(data, indent=2))


def write_chart(path: str, rows: list[Row], info: dict[str, str]) -> None:
    """A PNG of req/s and p99 per row, one pair of panels per body size.

    matplotlib (the ``bench`` extra) is imported here only; without it the
    chart is skipped with one line.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no chart: matplotlib is missing (pip install -e '.[bench]')")
        return
    measured = [r for r in rows if any(r.samples.values())]
    if not measured:
        return
    fig, axes = plt.subplots(
        len(WORKLOADS), 2, figsize=(11, 1.2 + 0.45 * len(measured) * len(WORKLOADS))
    )
    for i, workload in enumerate(WORKLOADS):
        shown = [r for r in measured if r.samples[workload]]
        labels = [r.label for r in shown]
        for j, (attr, unit) in enumerate((("rps", "req/s"), ("p99_ms", "p99 ms"))):
            ax = axes[i][j]
            values = [r.median(workload, attr) or 0.0 for r in shown]
            colors = ["tab:orange" if "mg-" in r.key else "tab:gray" for r in shown]
            ax.barh(labels, values, color=colors)
            ax.invert_yaxis()
            ax.set_title(f"{workload}, {WORKLOADS[workload]} connections: {unit}")
            for y, v in enumerate(values):
                ax.text(
                    v,
                    y,
                    f" {v:.0f}" if attr == "rps" else f" {v:.1f}",
                    va="center",
                    fontsize=8,
                )
            ax.margins(x=0.2)
            if j:
                ax.set_yticklabels([])
    fig.suptitle(
        f"metagateway benchmark {info['date']}, {info['cpus']} CPUs, "
        f"medians of {info['rounds']} rounds of {info['duration']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"chart written to {path}")


def main(argv: list[str] | None = None) -> int:
    """Parse options, set up, measure, report, clean up."""
    parser = argparse.ArgumentParser(
        description="Side-by-side benchmark: metagateway vs nginx and Twisted proxies (issue 6)."
    )
    parser.add_argument(
        "--duration", default="5s", help="wrk duration per run (default 5s)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, order rotated and every other round reversed (default 3)",
    )
    parser.add_argument(
        "--warmup",
        default="2s",
        help="wrk warm-up per server and workload (default 2s)",
    )
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds between wrk runs (default 1)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes for the multi-process rows (default 2)",
    )
    parser.add_argument(
        "--pypy",
        default="auto",
        help="PyPy for the pypy-* rows: 'auto' (default) prepares .pypy-venv "
        "from Debian's pypy3 with bench/pypyenv.py (apt-get install pypy3 "
        "pypy3-venv pypy3-dev as root unless --no-install); an interpreter "
        "path or name to use as it is; '' to skip",
    )
    parser.add_argument(
        "--pypy-warmup",
        type=float,
        default=PYPY_WARMUP,
        metavar="FACTOR",
        help=f"the PyPy rows warm up FACTOR times --warmup (times N for "
        f"pypy-mg-N), for the JIT (default {PYPY_WARMUP:g})",
    )
    parser.add_argument(
        "--pypy-nursery",
        default=PYPY_NURSERY,
        metavar="SIZE",
        help=f"PYPY_GC_NURSERY for the PyPy rows (default {PYPY_NURSERY}; '' "
        "leaves PyPy's own, sized from the L2 cache)",
    )
    parser.add_argument(
        "--only",
        help="comma list of row keys: nginx-direct, nginx-proxy, stock, bare-1, bare-N, "
        "mg-1, mg-N, pypy-bare-1, pypy-mg-1, pypy-mg-N",
    )
    parser.add_argument(
        "--assertion-key",
        metavar="FILE",
        help="GATEWAY_ASSERTION_KEY_FILE for the metagateway rows (each "
        "proxied request then signs an assertion)",
    )
    parser.add_argument("--json", help="also write every sample to this file")
    parser.add_argument(
        "--chart",
        metavar="FILE",
        help="PNG chart of req/s and p99 per row (default: the --json file's "
        "name with .png, else $TMPDIR/metagateway-bench.png; '' for none)",
    )
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (configs, logs)",
    )
    args = parser.parse_args(argv)
    global ASSERTION_KEY
    if args.pypy_nursery:
        PYPY_ENV["PYPY_GC_NURSERY"] = args.pypy_nursery
    ASSERTION_KEY = os.path.abspath(args.assertion_key) if args.assertion_key else None
    _seconds(args.duration)
    _seconds(args.warmup)

    tools = ensure_tools(not args.no_install)
    args.pypy_python, args.pypy_reason = resolve_pypy(args)
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": str(os.cpu_count()),
        "python": version_of([sys.executable, "-c", INTERPRETER]),
        "pypy": version_of([args.pypy_python, "-c", INTERPRETER])
        if args.pypy_python
        else args.pypy_reason,
        "nginx": version_of([tools["nginx"], "-v"]).split()[-1],
        "wrk": version_of([tools["wrk"], "-v"]).split()[1],
        "pypy env": " ".join(f"{k}={v}" for k, v in PYPY_ENV.items()) or "-",
        "duration": args.duration,
        "rounds": str(args.rounds),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg())
        + " (1, 5, 15 min, before the run)",
    }
    print("metagateway side-by-side benchmark")
    for k, v in info.items():
        print(f"  {k:<9} {v}")
    if os.getloadavg()[0] > 0.5:
        print("  warning: the machine is busy before the run; figures will be noisy")

    # Ctrl-C and SIGTERM both unwind through the finally below.
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # even if started with it ignored
    lab = Lab(keep=args.keep)
    try:
        print(f"starting servers (logs in {lab.dir}) ...", flush=True)
        upstream = start_upstream(lab, tools["nginx"])
        rows = start_all(lab, plan(args, tools["nginx"]), upstream)
        measure(rows, tools["wrk"], args)
        print_table(rows)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average after the run: {load}\n")
        checks = print_checks(rows, args.workers)
        if args.json:
            write_json(args.json, rows, checks, info)
            print(f"samples written to {args.json}")
        chart = args.chart
        if chart is None:
            chart = (
                str(Path(args.json).with_suffix(".png"))
                if args.json
                else os.path.join(tempfile.gettempdir(), "metagateway-bench.png")
            )
        if chart:
            write_chart(chart, rows, info)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        lab.close()
        if args.keep:
            print(f"kept {lab.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
