"""
A browser app on another origin opening a WebSocket through the real
daemon (:ref:`contract-websocket`): headless Chromium loads a page served
from another loopback port, whose script logs in at the gateway (a
cross-origin ``fetch``), opens ``new WebSocket(... "?access_token=" +
token)``, sends a message and writes the echo (or the failure) into its
page; ``--dump-dom`` prints the page. The upstream is the Autobahn echo
server of :mod:`tests.integration.test_websocket`.

Skipped when ``chromium`` is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from metagateway.auth.passwords import make_record
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.testing import SECRET
from tests.daemon import PASSWORD, USER, start_daemon
from tests.integration.test_websocket import EchoFactory

#: How long Chromium may take to load the page, run it and print it.
BROWSER_TIMEOUT = 60.0

#: The flags a headless Chromium runs with here (as root, in a container,
#: on a closed network: no sandbox, no GPU, nothing fetched in the
#: background).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

#: The page. Its ``load`` event waits for ``/hold``, which the page
#: server answers only once the script has written its outcome and
#: posted it to ``/done``: ``--dump-dom`` prints the page after ``load``.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>gateway websocket</title></head>
<body><p id="outcome">pending</p>
<script>
const gateway = %(gateway)s;
async function run() {
  let url = "ws://" + gateway + "/build/echo?x=1";
  if (%(login)s) {
    const answer = await fetch("http://" + gateway + "/auth/login", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({username: %(user)s, password: %(password)s}),
    });
    if (!answer.ok) {
      return "login failed: " + answer.status;
    }
    const token = (await answer.json()).token;
    url += "&access_token=" + encodeURIComponent(token);
  }
  return await new Promise((resolve) => {
    let errored = false;
    const ws = new WebSocket(url);
    ws.onopen = () => ws.send("hello from the page");
    ws.onmessage = (event) => {
      resolve("echo: " + event.data);
      ws.close();
    };
    ws.onerror = () => { errored = true; };
    ws.onclose = (event) => {
      resolve((errored ? "error, " : "") + "closed: " + event.code);
    };
  });
}
run().catch((error) => "exception: " + error).then((outcome) => {
  document.getElementById("outcome").textContent = outcome;
  return fetch("/done", {method: "POST", body: outcome});
});
</script>
<img src="/hold" alt="">
</body></html>
"""


def chromium() -> Optional[str]:
    """
    The Chromium executable, or ``None`` if there is none.
    """
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found is not None:
            return found
    return None


class PageServer(Resource):
    """
    The other origin: ``/page`` (the page, logging in or not), ``/hold``
    (answered once the page has posted to ``/done``), ``/done`` (the
    page's outcome, recorded in :attr:`outcome`).
    """

    isLeaf = True

    def __init__(self, gateway_port: int, login: bool) -> None:
        super().__init__()
        self.gateway_port = gateway_port
        self.login = login
        self.outcome: Optional[str] = None
        self._held: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        if request.path == b"/page":
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return (
                PAGE
                % {
                    "gateway": json.dumps("127.0.0.1:%d" % (self.gateway_port,)),
                    "login": "true" if self.login else "false",
                    "user": json.dumps(USER),
                    "password": json.dumps(PASSWORD),
                }
            ).encode("utf-8")
        if request.path == b"/hold":
            if self.outcome is not None:
                return self._release(request)
            self._held.append(request)
            # Gone before released (the browser stopped): forget it.
            request.notifyFinish().addErrback(lambda _: self._held.remove(request))
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b""

    def render_POST(self, request: Request) -> bytes:
        if request.path != b"/done":
            request.setResponseCode(404)
            return b""
        self.outcome = request.content.read().decode("utf-8")  # type: ignore[union-attr]
        held, self._held = self._held, []
        for waiting in held:
            waiting.write(self._release(waiting))
            waiting.finish()
        return b""

    def _release(self, request: Request) -> bytes:
        request.setResponseCode(204)
        return b""


class Browser(ProcessProtocol):
    """
    A Chromium process: its output, and when it ended.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[None] = Deferred()
        self.exit_code: Optional[int] = None

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.exit_code = 0 if reason.check(ProcessDone) else -1
        self.ended.callback(None)


def kill_group(pgid: int, sig: int) -> None:
    """
    Send ``sig`` to the process group ``pgid``, if any is left.
    """
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class BrowserWebSocketTests(TestCase):
    """
    A headless Chromium page on another origin opens a WebSocket through
    the real daemon.
    """

    timeout = 120

    def setUp(self) -> None:
        executable = chromium()
        if executable is None:
            raise SkipTest(
                "chromium is not installed (apt-get install chromium; .ci/run does)"
            )
        self.executable = executable
        self.accounts = FilePath(self.mktemp())
        DirectoryCredentialStore(self.accounts).store(
            make_record(USER, PASSWORD, "admin")
        )
        self.upstream = EchoFactory()
        port = reactor.listenTCP(0, self.upstream, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.upstream_url = "http://127.0.0.1:%d" % (port.getHost().port,)  # type: ignore[attr-defined]

    async def daemon(self) -> int:
        """
        Start the daemon in front of the echo server; its port.
        """
        _, base = await start_daemon(
            self,
            {"GATEWAY_JWT_SECRET": SECRET, "BUILD_SERVICE_URL": self.upstream_url},
            "--accounts-dir",
            self.accounts.path,
            "--drain-timeout",
            "2",
        )
        return int(base.rsplit(":", 1)[1])

    def serve_page(self, gateway_port: int, login: bool) -> tuple[PageServer, str]:
        """
        Serve the page on another loopback port (another origin).

        :return: the page server and the page's URL.
        """
        pages = PageServer(gateway_port, login)
        port = reactor.listenTCP(0, Site(pages), interface="127.0.0.1")  # type: ignore[attr-defined, arg-type]
        self.addCleanup(port.stopListening)
        page_port = port.getHost().port  # type: ignore[attr-defined]
        self.assertNotEqual(page_port, gateway_port)
        return pages, "http://127.0.0.1:%d/page" % (page_port,)

    async def browse(self, url: str) -> str:
        """
        Load ``url`` in headless Chromium with a fresh profile, and return
        the page as ``--dump-dom`` prints it.

        Chromium runs in a process group of its own (it starts helper
        processes), killed after :data:`BROWSER_TIMEOUT` and, whatever
        happened, in the test's cleanup.
        """
        profile = FilePath(self.mktemp())
        profile.makedirs()
        argv = [
            sys.executable,
            "-c",
            "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])",
            self.executable,
            *CHROMIUM_FLAGS,
            "--user-data-dir=" + profile.path,
            "--dump-dom",
            url,
        ]
        browser = Browser()
        # A home of its own too: nothing of the browser's outlives the test.
        env = {key: os.environ[key] for key in ("PATH", "LANG") if key in os.environ}
        env["HOME"] = profile.path
        process = reactor.spawnProcess(browser, argv[0], argv, env=env)  # type: ignore[attr-defined]
        pgid = process.pid

        expired: list[bool] = []

        def timed_out() -> None:
            expired.append(True)
            kill_group(pgid, signal.SIGKILL)

        killer = reactor.callLater(BROWSER_TIMEOUT, timed_out)  # type: ignore[attr-defined]

        async def stop() -> None:
            if killer.active():
                killer.cancel()
            kill_group(pgid, signal.SIGTERM)
            if not browser.ended.called:
                last = reactor.callLater(5, kill_group, pgid, signal.SIGKILL)  # type: ignore[attr-defined]
                await browser.ended
                if last.active():
                    last.cancel()
            kill_group(pgid, signal.SIGKILL)

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        await browser.ended
        self.assertFalse(
            expired,
            "chromium did not finish in %ds: %r"
            % (BROWSER_TIMEOUT, browser.err[-2000:]),
        )
        self.assertEqual(browser.exit_code, 0, browser.err[-2000:])
        return browser.out.decode("utf-8")

    async def test_echo_from_another_origin(self) -> None:
        """
        The page logs in with a cross-origin ``fetch``, opens a WebSocket
        with its token in ``access_token`` and gets its message back; the
        upstream saw the handshake without the token, with the gateway's
        identity headers and the page's origin.
        """
        gateway_port = await self.daemon()
        pages, url = self.serve_page(gateway_port, login=True)
        dom = await self.browse(url)
        self.assertIn(
            '<p id="outcome">echo: hello from the page</p>', dom, pages.outcome
        )
        self.assertEqual(pages.outcome, "echo: hello from the page")
        (request,) = self.upstream.handshakes
        self.assertEqual(request.path, "/echo")
        self.assertEqual(request.params, {"x": ["1"]})
        self.assertNotIn("authorization", request.headers)
        self.assertEqual(request.headers["x-gateway-user"], USER)
        self.assertEqual(request.headers["x-gateway-route"], "BUILD")
        self.assertEqual(request.headers["origin"], url.rsplit("/", 1)[0])

    async def test_no_token(self) -> None:
        """
        Without a token the page sees its WebSocket fail (``error``, then
        ``close`` with 1006), and the upstream never had a connection.
        """
        gateway_port = await self.daemon()
        pages, url = self.serve_page(gateway_port, login=False)
        dom = await self.browse(url)
        self.assertIn('<p id="outcome">error, closed: 1006</p>', dom, pages.outcome)
        self.assertEqual(self.upstream.connections, 0)
        self.assertEqual(self.upstream.handshakes, [])
