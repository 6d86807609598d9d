"""
The R2 credential store: account records in an S3-compatible bucket.

Records live under ``auth/admins/{username}.json`` in one bucket, addressed
path-style (``{endpoint}/{bucket}/{key}``) and signed with AWS Signature
Version 4 as S3 expects it (:mod:`~metagateway.credentials.s3`: the
signing, encoding and XML); treq sends the requests, so every call is a
:class:`Deferred` driven by the injected reactor.

Faults map onto the two failures of
:class:`~metagateway.credentials.interfaces.ICredentialStore`: a missing
object (a ``404`` whose error document says ``NoSuchKey``) is
:class:`UnknownAccount`; anything else that stops the store from answering
(a missing bucket or any other ``404``, refused signature, timeouts,
connection errors and 5xx after a few retries, unreadable records) is
:class:`StoreUnavailable`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Coroutine, Mapping, Optional, TypeVar

from hyperlink import EncodedURL
from treq import collect
from treq.client import HTTPClient
from zope.interface import implementer

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (  # type: ignore[attr-defined]
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from metagateway.config import R2Settings
from metagateway.credentials.interfaces import (
    AccountRecord,
    IWritableCredentialStore,
    StoreUnavailable,
    UnknownAccount,
    UnreadableRecord,
    is_valid_username,
    record_key,
)
from metagateway.credentials.s3 import (
    CONTENTS_KEY,
    S3_NAMESPACE,
    encode_key,
    encode_query,
    error_code,
    parse_xml,
    sign_request,
)
from metagateway.notes import outgoing_traceparent

_T = TypeVar("_T")

#: The key prefix every record lives under.
RECORD_PREFIX = "auth/admins/"

#: Largest record read; a bigger object is unreadable.
MAX_RECORD_BYTES = 64 * 1024

#: Largest ListObjectsV2 page or error document read.
MAX_LISTING_BYTES = 4 * 1024 * 1024

#: Most ListObjectsV2 pages followed in one listing.
MAX_LISTING_PAGES = 10000

#: Failures of the connection (not of the store's answer) that are retried.
_CONNECTION_ERRORS = (
    ConnectError,
    DNSLookupError,
    ConnectionClosed,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)


class _TooLarge(Exception):
    """
    A response body went over its cap while being read.
    """


@dataclass(frozen=True)
class _Answer:
    """
    A response, its body read (up to a cap).

    :ivar status: the HTTP status code.
    :ivar body: the body bytes.
    """

    status: int
    body: bytes


def _is_cancellation(error: BaseException) -> bool:
    """
    Whether ``error`` is (or wraps) the cancellation of our own call, which
    must end it rather than be retried.
    """
    if isinstance(error, CancelledError):
        return True
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, list):
        return any(
            isinstance(reason, Failure) and reason.check(CancelledError) is not None
            for reason in reasons
        )
    return False


@implementer(IWritableCredentialStore)
class R2CredentialStore:
    """
    Account records in an R2 (or any S3-compatible) bucket.

    Every public method returns a :class:`Deferred` that fires within
    ``timeout`` seconds (measured on ``clock``), retries included.
    Connection errors and 5xx answers are retried up to ``retries`` times,
    waiting ``backoff`` seconds, then twice that, and so on.

    :param settings: the endpoint, bucket, region and keys.
    :param client: the treq client requests are sent with.
    :param clock: the reactor timeouts, backoff and signing times use.
    :param timeout: seconds each call may take in all.
    :param retries: how many times a failed attempt is repeated.
    :param backoff: seconds before the first retry.
    """

    log = Logger()

    def __init__(
        self,
        settings: R2Settings,
        client: HTTPClient,
        clock: IReactorTime,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.2,
    ) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._base = "%s/%s" % (
            settings.endpoint_url.rstrip("/"),
            encode_key(settings.bucket),
        )

    def __repr__(self) -> str:
        return "<R2CredentialStore %s>" % (self._base,)

    # -- the interface -------------------------------------------------

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        """
        Read ``username``'s record with a ``GET``.

        :return: a Deferred firing with the :class:`AccountRecord`, failing
            with :class:`UnknownAccount` (a ``404`` ``NoSuchKey``, or a name
            that is never looked up) or :class:`StoreUnavailable` (any other
            ``404``, such as ``NoSuchBucket``; :class:`UnreadableRecord`).
        """
        return self._bounded(self._lookup(username))

    def store(self, record: AccountRecord) -> Deferred[None]:
        """
        Write ``record`` with a ``PUT``, replacing any earlier one.

        :return: a Deferred firing with ``None``, failing with
            :class:`StoreUnavailable`, or with :class:`ValueError` for a
            username that :func:`is_valid_username` refuses.
        """
        return self._bounded(self._store(record))

    def remove(self, username: str) -> Deferred[None]:
        """
        Delete ``username``'s record: a ``HEAD`` (S3's ``DELETE`` succeeds
        for missing keys too), then a ``DELETE``. A ``404`` to the ``HEAD``
        is asked again with a ``GET``, whose error document tells a missing
        record (``NoSuchKey``) from a missing bucket.

        :return: a Deferred firing with ``None``, failing with
            :class:`UnknownAccount` or :class:`StoreUnavailable`.
        """
        return self._bounded(self._remove(username))

    def usernames(self) -> Deferred[list[str]]:
        """
        List the stored usernames with ``ListObjectsV2``, following every
        page.

        :return: a Deferred firing with the sorted names, or failing with
            :class:`StoreUnavailable`.
        """
        return self._bounded(self._usernames())

    # -- the operations ------------------------------------------------

    async def _lookup(self, username: str) -> AccountRecord:
        if not is_valid_username(username):
            raise UnknownAccount(username)
        # The login's trace, when one is looking (:ref:`contract-observability`).
        traceparent = outgoing_traceparent.get()
        answer = await self._call(
            "GET",
            self._object_path(username),
            cap=MAX_RECORD_BYTES,
            headers=None if traceparent is None else {"traceparent": traceparent},
        )
        if answer.status == 404:
            self._expect_no_such_key(answer, "GET")
            raise UnknownAccount(username)
        self._expect(answer, "GET", 200)
        return AccountRecord.from_json(answer.body, username)

    async def _store(self, record: AccountRecord) -> None:
        if not is_valid_username(record.username):
            raise ValueError("invalid username")
        answer = await self._call(
            "PUT",
            self._object_path(record.username),
            body=record.to_json(),
            headers={"Content-Type": "application/json"},
        )
        self._expect(answer, "PUT", 200, 201, 204)

    async def _remove(self, username: str) -> None:
        if not is_valid_username(username):
            raise UnknownAccount(username)
        path = self._object_path(username)
        what = "HEAD"
        answer = await self._call(what, path)
        if answer.status == 404:
            # A HEAD answer has no body to say why; a GET's does.
            what = "GET"
            answer = await self._call(what, path, cap=MAX_RECORD_BYTES)
            if answer.status == 404:
                self._expect_no_such_key(answer, what)
                raise UnknownAccount(username)
        self._expect(answer, what, 200)
        answer = await self._call("DELETE", path)
        if answer.status == 404:
            self._expect_no_such_key(answer, "DELETE")
            raise UnknownAccount(username)
        self._expect(answer, "DELETE", 200, 204)

    async def _usernames(self) -> list[str]:
        names: list[str] = []
        token: Optional[str] = None
        seen: set[str] = set()
        for _ in range(MAX_LISTING_PAGES):
            params = {"list-type": "2", "prefix": RECORD_PREFIX}
            if token is not None:
                params["continuation-token"] = token
            answer = await self._call(
                "GET", "", query=encode_query(params), cap=MAX_LISTING_BYTES
            )
            self._expect(answer, "LIST", 200)
            root = parse_xml(answer.body)
            # Only ListBucketResult/Contents/Key: a path, not a recursive
            # search, so a deeply nested answer cannot exhaust the stack
            # (ElementTree's pure-Python iter() recurses, as on PyPy).
            for key in root.iterfind(CONTENTS_KEY):
                name = (key.text or "")[len(RECORD_PREFIX) :]
                if (key.text or "").startswith(RECORD_PREFIX) and name.endswith(
                    ".json"
                ):
                    name = name[: -len(".json")]
                    if name and "/" not in name:
                        names.append(name)
            truncated = root.findtext(S3_NAMESPACE + "IsTruncated", "false")
            if truncated.strip().lower() != "true":
                return sorted(set(names))
            token = root.findtext(S3_NAMESPACE + "NextContinuationToken")
            if not token or token in seen:
                raise StoreUnavailable("R2 listing has a bad continuation token")
            seen.add(token)
        raise StoreUnavailable("R2 listing has too many pages")

    # -- the plumbing --------------------------------------------------

    def _object_path(self, username: str) -> str:
        """
        The encoded URL path, under the bucket, of ``username``'s record.
        """
        return "/" + encode_key(record_key(username))

    def _bounded(self, coroutine: Coroutine[Any, Any, _T]) -> Deferred[_T]:
        """
        Run ``coroutine`` as a Deferred that fails with
        :class:`StoreUnavailable` when it takes over ``timeout`` seconds.
        """
        d = Deferred.fromCoroutine(coroutine)
        d.addTimeout(self._timeout, self._clock)

        def timed_out(reason: Failure) -> Failure:
            if reason.check(TimeoutError):
                self.log.warn(
                    "R2 credential store did not answer in {timeout} seconds",
                    timeout=self._timeout,
                )
                raise StoreUnavailable(
                    "R2 did not answer within %g seconds" % (self._timeout,)
                )
            return reason

        return d.addErrback(timed_out)

    def _expect(self, answer: _Answer, what: str, *statuses: int) -> None:
        """
        Raise :class:`StoreUnavailable` unless ``answer`` has one of
        ``statuses``.

        The message names the status and the S3 error code (never a key or
        secret); a bucket that does not exist is named, and logged, since
        that is a mistake in the configuration rather than an outage.
        """
        if answer.status in statuses:
            return
        code = error_code(answer.body) if answer.body else ""
        if answer.status == 403:
            reason = "R2 refused our credentials or clock"
        elif code == "NoSuchBucket":
            self.log.error(
                "R2 bucket {bucket!r} does not exist at the configured endpoint"
                " (R2_BUCKET): every lookup fails until it does",
                bucket=self._settings.bucket,
            )
            reason = "R2 has no bucket %r" % (self._settings.bucket,)
        else:
            reason = "R2 answered an unexpected status"
        raise StoreUnavailable(
            "%s (%s %d%s)" % (reason, what, answer.status, " " + code if code else "")
        )

    def _expect_no_such_key(self, answer: _Answer, what: str) -> None:
        """
        Check that a ``404`` answer says the object is missing.

        Only S3's ``NoSuchKey`` error document means that: a ``404`` for a
        bucket that does not exist (``NoSuchBucket``), with another code, or
        with no error document at all (an endpoint that is not S3) is not
        evidence that an account is absent, so it is never
        :class:`UnknownAccount`.

        :raises StoreUnavailable: unless the answer's code is ``NoSuchKey``.
        """
        if error_code(answer.body) != "NoSuchKey":
            self._expect(answer, what)

    async def _call(
        self,
        method: str,
        path: str,
        query: str = "",
        body: bytes = b"",
        headers: Optional[Mapping[str, str]] = None,
        cap: int = MAX_LISTING_BYTES,
    ) -> _Answer:
        """
        Send one request, retrying connection errors and 5xx answers.

        :param method: the HTTP method.
        :param path: the encoded path below the bucket (``""`` for the
            bucket itself).
        :param query: the encoded query string, or ``""``.
        :param body: the request body.
        :param headers: further headers to sign and send.
        :param cap: the most body bytes read from the answer.
        :raises StoreUnavailable: when every attempt failed, or the answer
            is over ``cap``.
        """
        url = self._base + path + ("?" + query if query else "")
        attempts = self._retries + 1
        for attempt in range(attempts):
            if attempt:
                delay = self._backoff * 2 ** (attempt - 1)
                await deferLater(self._clock, delay, lambda: None)
            try:
                answer = await self._attempt(method, url, body, headers or {}, cap)
            except _CONNECTION_ERRORS as e:
                if _is_cancellation(e):
                    raise CancelledError() from None
                problem = "cannot reach R2 (%s)" % (type(e).__name__,)
            else:
                if answer.status < 500:
                    return answer
                problem = "R2 answered %d" % (answer.status,)
            self.log.warn(
                "R2 {method} failed, attempt {attempt} of {attempts}: {problem}",
                method=method,
                attempt=attempt + 1,
                attempts=attempts,
                problem=problem,
            )
        raise StoreUnavailable(problem)

    async def _attempt(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        cap: int,
    ) -> _Answer:
        """
        Sign and send one request and read its answer, up to ``cap`` bytes.

        :raises StoreUnavailable: if the answer's body is over ``cap``.
        """
        when = datetime.datetime.fromtimestamp(
            self._clock.seconds(), datetime.timezone.utc
        )
        signed = sign_request(
            method,
            url,
            headers,
            body,
            self._settings.access_key_id,
            self._settings.secret_access_key,
            self._settings.region,
            when,
        )
        response: IResponse = await self._client.request(
            method,
            EncodedURL.from_text(url),
            headers=Headers(
                {
                    name.encode("ascii"): [value.encode("utf-8")]
                    for name, value in signed.items()
                }
            ),
            data=body or None,
            allow_redirects=False,
            unbuffered=True,
        )
        if method == "HEAD":
            return _Answer(response.code, b"")
        length = response.length
        if isinstance(length, int) and length > cap:
            self._discard(response)
            raise _too_large(response.code)
        chunks: list[bytes] = []
        received = 0

        def collector(data: bytes) -> None:
            nonlocal received
            received += len(data)
            if received > cap:
                raise _TooLarge()
            chunks.append(data)

        try:
            await collect(response, collector)
        except _TooLarge:
            raise _too_large(response.code) from None
        return _Answer(response.code, b"".join(chunks))

    def _discard(self, response: IResponse) -> None:
        """
        Stop reading ``response``: its connection is closed, not reused.
        """

        def refuse(data: bytes) -> None:
            raise _TooLarge()

        collect(response, refuse).addErrback(lambda reason: None)


def _too_large(status: int) -> StoreUnavailable:
    """
    The failure for an answer whose body is over its cap.
    """
    if status == 200:
        return UnreadableRecord("R2 answered a body that is too large")
    return StoreUnavailable("R2 answered %d with a body that is too large" % status)
