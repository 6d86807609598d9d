"""
A real S3-compatible server for integration tests: ``moto_server`` on a
loopback port, with signature checking switched on.

:class:`MotoServer` starts the server as a child process, waits until it
answers, creates an IAM user with an access key allowed ``s3:*``, turns
on moto's authentication (``POST /moto-api/reset-auth`` with body ``0``)
and creates the bucket. moto keeps its state in memory, so a restart sets
everything up again; moto's random generator is seeded first, so the
restarted server hands out the same access key and secret.

moto's server checks signatures against werkzeug's re-quoted URL rather
than the request target as sent, so correctly signed requests whose path
or query hold non-ASCII characters, ``/`` in a query value (``prefix=``)
or sub-delimiters fail there, boto3's included (getmoto/moto#5948). The
child is therefore started through :func:`serve`, which has moto check the
signature over the raw request target, as S3 and R2 do; nothing else about
moto changes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Optional

#: The policy given to the test user: everything on S3.
_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
)


def serve(argv: list[str]) -> None:
    """
    Run ``moto_server`` with ``argv``, checking SigV4 signatures over the
    request target as sent (``RAW_URI``) instead of werkzeug's re-quoted
    URL. Runs in the child process only.

    :param argv: ``moto_server``'s arguments.
    """
    from urllib.parse import urlsplit, urlunsplit

    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.responses import BaseResponse
    from moto.server import main

    setup_class = BaseResponse.setup_class
    authenticate = ActionAuthenticatorMixin._authenticate_and_authorize_action

    def keep_raw_uri(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        environ = getattr(request, "environ", None)
        self._metagateway_raw_uri = (
            environ.get("RAW_URI") if isinstance(environ, dict) else None
        )
        return setup_class(self, request, *args, **kwargs)

    def check_raw(self: Any, *args: Any, **kwargs: Any) -> Any:
        raw = getattr(self, "_metagateway_raw_uri", None)
        if not raw:
            return authenticate(self, *args, **kwargs)
        parsed = urlsplit(self.uri)
        target = urlsplit(raw)
        rebuilt = urlunsplit(
            (parsed.scheme, parsed.netloc, target.path, target.query, "")
        )
        saved, self.uri = self.uri, rebuilt
        try:
            return authenticate(self, *args, **kwargs)
        finally:
            self.uri = saved

    BaseResponse.setup_class = keep_raw_uri  # type: ignore[method-assign]
    ActionAuthenticatorMixin._authenticate_and_authorize_action = check_raw  # type: ignore[method-assign]
    main(argv)


def free_port() -> int:
    """
    A loopback TCP port that was free a moment ago (moto_server cannot be
    told to listen on port 0).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moto_available() -> Optional[str]:
    """
    ``None`` if moto's server and boto3 can be imported, else the reason
    they cannot (for ``SkipTest``).
    """
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as e:
        return "moto[server] and boto3 are needed: %s" % (e,)
    return None


class MotoServer:
    """
    One ``moto_server`` child on ``127.0.0.1``.

    :ivar port: the port it listens on (kept across restarts).
    :ivar bucket: the bucket created at each start.
    :ivar region: the region the bucket is created in.
    :ivar access_key_id: the IAM user's access key id.
    :ivar secret_access_key: the IAM user's secret key.
    """

    def __init__(
        self,
        bucket: str = "metacogna-accounts",
        region: str = "auto",
        seed: int = 2013,
        log_path: Optional[str] = None,
    ) -> None:
        """
        :param bucket: the bucket to create.
        :param region: the bucket's region (``auto`` as R2 uses).
        :param seed: the seed of moto's identifiers, so keys survive a
            restart.
        :param log_path: a file for the server's output, else discarded.
        """
        self.bucket = bucket
        self.region = region
        self.seed = seed
        self.port = 0
        self.access_key_id = ""
        self.secret_access_key = ""
        self._log_path = log_path
        self._process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """
        The endpoint URL, ``http://127.0.0.1:PORT``.
        """
        return "http://127.0.0.1:%d" % (self.port,)

    def environ(self, secret_access_key: Optional[str] = None) -> dict[str, str]:
        """
        The ``R2_*`` variables for this server.

        :param secret_access_key: a secret to use instead of the right one.
        """
        return {
            "R2_ENDPOINT_URL": self.url,
            "R2_ACCESS_KEY_ID": self.access_key_id,
            "R2_SECRET_ACCESS_KEY": (
                self.secret_access_key
                if secret_access_key is None
                else secret_access_key
            ),
            "R2_BUCKET": self.bucket,
            "R2_REGION": self.region,
        }

    def start(self, timeout: float = 30.0) -> None:
        """
        Start the server on a free port, wait until it answers, and set it
        up.

        :raises RuntimeError: if it does not answer within ``timeout``.
        """
        last: Optional[Exception] = None
        for _ in range(3):
            self.port = free_port()
            try:
                self._spawn(timeout)
            except RuntimeError as e:
                last = e
                self.stop()
                continue
            self._set_up()
            return
        raise RuntimeError("moto_server did not start: %s" % (last,))

    def _spawn(self, timeout: float) -> None:
        env = dict(os.environ)
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            [root] + [p for p in [env.get("PYTHONPATH", "")] if p]
        )
        if self._log_path:
            with open(self._log_path, "ab") as log:
                self._process = self._popen(log.fileno(), env)
        else:
            self._process = self._popen(subprocess.DEVNULL, env)
        self._wait_until_answering(timeout)

    def _popen(self, output: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from tests.s3server import serve; serve(sys.argv[1:])",
                "-H",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=env,
        )

    def _wait_until_answering(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    "moto_server exited with %s" % self._process.returncode
                )
            try:
                with urllib.request.urlopen(  # noqa: S310 (loopback http)
                    self.url + "/moto-api/data.json", timeout=1
                ) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("moto_server did not answer on port %d" % (self.port,))

    def _post(self, path: str, body: bytes = b"") -> None:
        request = urllib.request.Request(  # noqa: S310 (loopback http)
            self.url + path,
            data=body,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()

    def _set_up(self) -> None:
        import boto3

        self._post("/moto-api/seed?a=%d" % (self.seed,))
        iam = boto3.client(
            "iam",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="metagateway")
        iam.put_user_policy(
            UserName="metagateway", PolicyName="s3-all", PolicyDocument=_POLICY
        )
        key = iam.create_access_key(UserName="metagateway")["AccessKey"]
        self.access_key_id = key["AccessKeyId"]
        self.secret_access_key = key["SecretAccessKey"]
        self._post("/moto-api/reset-auth", b"0")
        self.s3_client().create_bucket(
            Bucket=self.bucket,
            CreateBucketConfiguration={"LocationConstraint": self.region},
        )

    def s3_client(self) -> Any:
        """
        A boto3 S3 client signed with the test user's key (for checking
        what the store wrote, and writing records as "any S3 client").
        """
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def stop(self) -> None:
        """
        Stop the server and wait for it to exit. Safe to call twice.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def restart(self) -> None:
        """
        Start a stopped server again, on the same port, with the same keys
        and an empty bucket.
        """
        self.stop()
        port = self.port
        self._spawn(30.0)
        assert self.port == port
        self._set_up()


if __name__ == "__main__":
    serve(sys.argv[1:])
