"""
A fake S3 bucket for tests: a twisted.web resource that checks each request's SigV4
signature (computed here independently of botocore, from the request as
received) and serves GET, PUT, HEAD, DELETE and ListObjectsV2, path-style.

Faults are scripted: :attr:`FakeS3.faults` holds what the next requests
get instead of a normal answer (a status code, :data:`HANG`, or raw
``(status, body)``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
from typing import Any, Optional, Union
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from metagateway.config import R2Settings

#: A fault: the request is never answered.
HANG = "hang"

#: How far the signing time may be from the fake's clock (S3 allows 15 min).
MAX_SKEW = 15 * 60

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"

Fault = Union[int, str, "tuple[int, bytes]"]

#: The settings the fake expects by default.
SETTINGS = R2Settings(
    endpoint_url="https://account.r2.example",
    access_key_id="AKIDEXAMPLE12345",
    secret_access_key="fake/secret+KEY/for-tests-only",  # noqa: S106 (a fake)
    bucket="metacogna-accounts",
    region="auto",
)


def _error(request: Request, status: int, code: str) -> bytes:
    """
    S3's XML error document ``code`` with ``status``.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/xml")
    return (
        "<?xml version='1.0' encoding='UTF-8'?>"
        "<Error><Code>%s</Code><Message>%s</Message></Error>" % (code, code)
    ).encode("utf-8")


def _sign(key: bytes, message: str) -> bytes:
    """
    One step of SigV4's signing-key derivation.
    """
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


class FakeS3(Resource):
    """
    One bucket's objects in memory, behind SigV4 checks.

    :ivar objects: key to stored bytes.
    :ivar faults: what the next requests get instead of an answer.
    :ivar requests: ``(method, raw uri, headers)`` of every request seen.
    :ivar hanging: requests left unanswered by :data:`HANG`.
    :ivar page_size: keys per ListObjectsV2 page.
    """

    isLeaf = True

    def __init__(
        self,
        clock: IReactorTime,
        settings: R2Settings = SETTINGS,
        page_size: int = 2,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.settings = settings
        self.page_size = page_size
        self.objects: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []
        self.hanging: list[Request] = []

    def methods(self) -> list[str]:
        """
        The methods of the requests seen, in order.
        """
        return [method for method, _, _ in self.requests]

    def render(self, request: Request) -> Union[bytes, int]:
        """
        A scripted fault if one is due, else the checked request's answer.
        """
        method = request.method.decode("ascii")
        uri = request.uri
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((method, uri, headers))
        body = request.content.read() if request.content is not None else b""
        if self.faults:
            fault = self.faults.pop(0)
            if fault == HANG:
                self.hanging.append(request)
                return NOT_DONE_YET
            if isinstance(fault, tuple):
                request.setResponseCode(fault[0])
                return fault[1]
            assert isinstance(fault, int)
            return _error(request, fault, "ScriptedFault")
        problem = self._check_signature(method, uri, headers, body)
        if problem is not None:
            return _error(request, 403, problem)
        raw_path, _, raw_query = uri.decode("ascii").partition("?")
        prefix = "/" + quote(self.settings.bucket, safe="/~")
        if raw_path == prefix and method == "GET":
            return self._list(request, raw_query)
        if not raw_path.startswith(prefix + "/"):
            return _error(request, 404, "NoSuchBucket")
        key = unquote(raw_path[len(prefix) + 1 :], errors="strict")
        if method == "GET":
            if key not in self.objects:
                return _error(request, 404, "NoSuchKey")
            return self.objects[key]
        if method == "HEAD":
            if key not in self.objects:
                request.setResponseCode(404)
            return b""
        if method == "PUT":
            self.objects[key] = body
            return b""
        if method == "DELETE":
            self.objects.pop(key, None)
            request.setResponseCode(204)
            return b""
        return _error(request, 405, "MethodNotAllowed")

    def _check_signature(
        self, method: str, uri: bytes, headers: dict[str, str], body: bytes
    ) -> Optional[str]:
        """
        Check the request's SigV4 signature as S3 does.

        :return: ``None`` when it is good, else an S3 error code.
        """
        authorization = headers.get("authorization", "")
        scheme, _, rest = authorization.partition(" ")
        if scheme != "AWS4-HMAC-SHA256":
            return "MissingSecurityHeader"
        fields = {}
        for part in rest.split(","):
            name, _, value = part.strip().partition("=")
            fields[name] = value
        try:
            access_key, date, region, service, terminal = fields["Credential"].split(
                "/"
            )
            signed_names = fields["SignedHeaders"].split(";")
            signature = fields["Signature"]
        except (KeyError, ValueError):
            return "AuthorizationHeaderMalformed"
        if access_key != self.settings.access_key_id:
            return "InvalidAccessKeyId"
        amz_date = headers.get("x-amz-date", "")
        if (
            region != self.settings.region
            or service != "s3"
            or terminal != "aws4_request"
            or amz_date[:8] != date
        ):
            return "AuthorizationHeaderMalformed"
        for required in ("host", "x-amz-content-sha256", "x-amz-date"):
            if required not in signed_names:
                return "AuthorizationHeaderMalformed"
        if signed_names != sorted(signed_names):
            return "AuthorizationHeaderMalformed"
        try:
            when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
                tzinfo=datetime.timezone.utc
            )
        except ValueError:
            return "AuthorizationHeaderMalformed"
        if abs(when.timestamp() - self.clock.seconds()) > MAX_SKEW:
            return "RequestTimeTooSkewed"
        payload_hash = headers.get("x-amz-content-sha256", "")
        if payload_hash != hashlib.sha256(body).hexdigest():
            return "XAmzContentSHA256Mismatch"
        raw_path, _, raw_query = uri.decode("ascii").partition("?")
        for segment in raw_path.split("/"):
            if quote(unquote(segment), safe="~") != segment:
                return "NonCanonicalPath"
        pairs = []
        for pair in raw_query.split("&") if raw_query else []:
            name, _, value = pair.partition("=")
            for part in (name, value):
                if quote(unquote(part), safe="-_.~") != part:
                    return "NonCanonicalQuery"
            pairs.append((name, value))
        canonical_query = "&".join("%s=%s" % pair for pair in sorted(pairs))
        canonical_headers = "".join(
            "%s:%s\n" % (name, " ".join(headers.get(name, "").split()))
            for name in signed_names
        )
        canonical_request = "\n".join(
            [
                method,
                raw_path,
                canonical_query,
                canonical_headers,
                ";".join(signed_names),
                payload_hash,
            ]
        )
        scope = "%s/%s/s3/aws4_request" % (date, region)
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                amz_date,
                scope,
                hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
            ]
        )
        key = ("AWS4" + self.settings.secret_access_key).encode("utf-8")
        for part in (date, region, "s3", "aws4_request"):
            key = _sign(key, part)
        expected = hmac.new(
            key, string_to_sign.encode("utf-8"), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
            return "SignatureDoesNotMatch"
        return None

    def _list(self, request: Request, raw_query: str) -> bytes:
        """
        ListObjectsV2: :attr:`page_size` keys at a time, with a
        continuation token.
        """
        params = {}
        for pair in raw_query.split("&") if raw_query else []:
            name, _, value = pair.partition("=")
            params[unquote(name)] = unquote(value)
        if params.get("list-type") != "2":
            return _error(request, 400, "InvalidArgument")
        prefix = params.get("prefix", "")
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        token = params.get("continuation-token")
        if token is not None:
            after = base64.b64decode(token[len("t+/=") :]).decode("utf-8")
            keys = [k for k in keys if k > after]
        page, rest = keys[: self.page_size], keys[self.page_size :]
        parts = ['<?xml version="1.0" encoding="UTF-8"?>']
        parts.append('<ListBucketResult xmlns="%s">' % (_NS,))
        parts.append("<Name>%s</Name>" % (escape(self.settings.bucket),))
        parts.append("<Prefix>%s</Prefix>" % (escape(prefix),))
        parts.append("<KeyCount>%d</KeyCount>" % (len(page),))
        parts.append("<IsTruncated>%s</IsTruncated>" % ("true" if rest else "false"))
        if rest:
            next_token = "t+/=" + base64.b64encode(page[-1].encode("utf-8")).decode()
            parts.append(
                "<NextContinuationToken>%s</NextContinuationToken>"
                % (escape(next_token),)
            )
        for key in page:
            parts.append(
                "<Contents><Key>%s</Key><Size>%d</Size></Contents>"
                % (escape(key), len(self.objects[key]))
            )
        parts.append("</ListBucketResult>")
        request.setHeader(b"content-type", b"application/xml")
        return "".join(parts).encode("utf-8")


class RefusingClient:
    """
    A treq-like client whose requests fail with scripted connection errors
    (as many as are scripted), then go to another client such as
    ``StubTreq``.

    :ivar errors: the exceptions the next requests fail with.
    :ivar attempts: how many requests were made.
    """

    def __init__(self, client: Any, errors: Optional[list[Exception]] = None) -> None:
        self._client = client
        self.errors = errors if errors is not None else []
        self.attempts = 0

    def request(self, method: str, url: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Fail with the next scripted error, or pass the request on.
        """
        self.attempts += 1
        if self.errors:
            return fail(self.errors.pop(0))
        return self._client.request(method, url, **kwargs)  # type: ignore[no-any-return]
