"""
A real Redis for the tests: ``redis-server`` from the distribution's
packages, on a free loopback port, with no persistence, killed in cleanup.

:func:`redis_problem` says why the tests that need it are skipped (only
when ``redis-server`` is not installed; ``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Optional
from urllib.parse import quote

from tests.s3server import free_port


def redis_problem() -> Optional[str]:
    """
    ``None`` when ``redis-server`` can be run, else the reason it cannot
    (for ``SkipTest``).
    """
    if shutil.which("redis-server") is None:
        return (
            "redis-server is not installed (apt-get install redis-server; "
            ".ci/run does it)"
        )
    return None


class RedisServer:
    """
    One ``redis-server`` child on loopback.

    :ivar port: its port, kept across :meth:`restart`.
    """

    def __init__(self, password: Optional[str] = None) -> None:
        self.port = 0
        self.password = password
        self._process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """
        The ``--state-url`` naming it.
        """
        auth = ":%s@" % (quote(self.password, safe=""),) if self.password else ""
        return "redis://%s127.0.0.1:%d/0" % (auth, self.port)

    def start(self, timeout: float = 10.0) -> None:
        """
        Start the server (on a free port the first time, on the same port
        after a stop) and wait until it answers ``PING``.
        """
        if self._process is not None:
            return
        if not self.port:
            self.port = free_port()
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                if self.command("PING").startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer on port %d" % (self.port,))

    def command(self, *words: str) -> bytes:
        """
        Send one command (with ``AUTH`` first when there is a password) and
        return the first reply line of the last command.
        """
        payload = b""
        commands = [list(words)]
        if self.password:
            commands.insert(0, ["AUTH", self.password])
        for command in commands:
            payload += b"*%d\r\n" % (len(command),)
            for word in command:
                data = word.encode("utf-8")
                payload += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(payload)
            data = b""
            while data.count(b"\r\n") < len(commands):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n")[len(commands) - 1] if data else b""

    def stop(self) -> None:
        """
        Kill the server (it keeps nothing) and wait for it. Safe to call
        twice.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(10)

    def restart(self) -> None:
        """
        Stop the server and start an empty one on the same port.
        """
        self.stop()
        self.start()
