"""
Tests for :mod:`metagateway.credentials.r2` and
:mod:`metagateway.credentials.s3`: the SigV4 signer against AWS's published
examples, and the store over ``StubTreq`` against a fake
S3 bucket that checks every signature.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from zope.interface.verify import verifyObject

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from metagateway.auth.passwords import check_password, make_record
from metagateway.config import R2Settings
from metagateway.credentials.interfaces import (
    IWritableCredentialStore,
    StoreUnavailable,
    UnknownAccount,
    UnreadableRecord,
)
from metagateway.credentials.r2 import MAX_RECORD_BYTES, R2CredentialStore
from metagateway.credentials.s3 import encode_key, encode_query, sign_request
from metagateway.testing import (
    HANG,
    SETTINGS,
    FakeS3,
    GatewayHarness,
    RefusingClient,
    StubTreq,
)
from tests.helpers import assert_json_error

# The examples in AWS's "Signature Calculations for the Authorization
# Header: Transferring Payload in a Single Chunk (AWS Signature Version 4)"
# page of the Amazon S3 API reference.
EXAMPLE_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
EXAMPLE_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EXAMPLE_TIME = datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc)
EXAMPLE_HOST = "https://examplebucket.s3.amazonaws.com"
EXAMPLE_SCOPE = "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"

#: A clock reading in 2026, so signing dates look real to the fake.
NOW = 1_780_000_000.0


def _authorization(headers: dict[str, str]) -> dict[str, str]:
    """
    The fields of an ``Authorization`` header value.
    """
    scheme, _, rest = headers["Authorization"].partition(" ")
    fields = {"scheme": scheme}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    return fields


class SignerTests(SynchronousTestCase):
    """
    :func:`sign_request` reproduces AWS's published S3 SigV4 examples.
    """

    def sign(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> dict[str, str]:
        return sign_request(
            method,
            EXAMPLE_HOST + path,
            headers,
            body,
            EXAMPLE_ACCESS_KEY,
            EXAMPLE_SECRET_KEY,
            "us-east-1",
            EXAMPLE_TIME,
        )

    def assertSigned(
        self, headers: dict[str, str], signed_headers: str, signature: str
    ) -> None:
        fields = _authorization(headers)
        self.assertEqual(fields["scheme"], "AWS4-HMAC-SHA256")
        self.assertEqual("Credential=" + fields["Credential"], EXAMPLE_SCOPE)
        self.assertEqual(fields["SignedHeaders"], signed_headers)
        self.assertEqual(fields["Signature"], signature)

    def test_get_object(self) -> None:
        """
        The GET Object example (first 10 bytes of ``test.txt``).
        """
        headers = self.sign("GET", "/test.txt", {"Range": "bytes=0-9"})
        self.assertSigned(
            headers,
            "host;range;x-amz-content-sha256;x-amz-date",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        )
        self.assertEqual(headers["X-Amz-Date"], "20130524T000000Z")
        self.assertEqual(
            headers["X-Amz-Content-SHA256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        self.assertEqual(headers["Host"], "examplebucket.s3.amazonaws.com")

    def test_put_object(self) -> None:
        """
        The PUT Object example (``test$file.text``, a key that needs
        percent-encoding, with a body).
        """
        headers = self.sign(
            "PUT",
            "/" + encode_key("test$file.text"),
            {
                "Date": "Fri, 24 May 2013 00:00:00 GMT",
                "x-amz-storage-class": "REDUCED_REDUNDANCY",
            },
            b"Welcome to Amazon S3.",
        )
        self.assertSigned(
            headers,
            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        )
        self.assertEqual(
            headers["X-Amz-Content-SHA256"],
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
        )

    def test_get_bucket_lifecycle(self) -> None:
        """
        The GET Bucket Lifecycle example (a query parameter without value).
        """
        headers = self.sign("GET", "/?lifecycle", {})
        self.assertSigned(
            headers,
            "host;x-amz-content-sha256;x-amz-date",
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
        )

    def test_list_objects(self) -> None:
        """
        The Get Bucket (List Objects) example, its query built with
        :func:`encode_query`.
        """
        query = encode_query({"prefix": "J", "max-keys": "2"})
        self.assertEqual(query, "max-keys=2&prefix=J")
        headers = self.sign("GET", "/?" + query, {})
        self.assertSigned(
            headers,
            "host;x-amz-content-sha256;x-amz-date",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        )

    def test_secret_not_in_headers(self) -> None:
        """
        No header sent carries the secret key.
        """
        headers = self.sign("GET", "/test.txt", {})
        for value in headers.values():
            self.assertNotIn(EXAMPLE_SECRET_KEY, value)

    def test_encode_key(self) -> None:
        """
        Keys are encoded once, as S3 expects: ``/`` and unreserved
        characters kept, spaces as ``%20``, other bytes of the UTF-8
        encoding escaped.
        """
        self.assertEqual(encode_key("auth/admins/a b.json"), "auth/admins/a%20b.json")
        self.assertEqual(encode_key("zoë~-_.x"), "zo%C3%AB~-_.x")
        self.assertEqual(encode_key("a+b=c&d%e"), "a%2Bb%3Dc%26d%25e")
        self.assertEqual(encode_key("日本"), "%E6%97%A5%E6%9C%AC")

    def test_encode_query(self) -> None:
        """
        Query names are sorted and values encoded, ``/`` included.
        """
        self.assertEqual(
            encode_query({"prefix": "auth/admins/", "list-type": "2", "z": "a b+"}),
            "list-type=2&prefix=auth%2Fadmins%2F&z=a%20b%2B",
        )


class R2StoreTests(SynchronousTestCase):
    """
    :class:`R2CredentialStore` against a fake S3 bucket over ``StubTreq``.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.s3 = FakeS3(self.clock)
        self.treq = StubTreq(self.s3)
        self.client = RefusingClient(self.treq)
        self.store = self.make_store()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)  # type: ignore[arg-type]

    def make_store(
        self, settings: R2Settings = SETTINGS, **kwargs: Any
    ) -> R2CredentialStore:
        return R2CredentialStore(settings, self.client, self.clock, **kwargs)  # type: ignore[arg-type]

    def put(self, name: str, data: bytes) -> None:
        self.s3.objects["auth/admins/%s.json" % (name,)] = data

    def assertNoSecretShown(self, *texts: str) -> None:
        """
        Neither the given texts nor any logged event mention the secret.
        """
        secret = SETTINGS.secret_access_key
        for text in texts:
            self.assertNotIn(secret, text)
        for event in self.events:
            self.assertNotIn(secret, repr(event))

    def test_interface(self) -> None:
        """
        The store provides :class:`IWritableCredentialStore`.
        """
        self.assertTrue(verifyObject(IWritableCredentialStore, self.store))

    def test_repr_hides_secret(self) -> None:
        """
        The store's repr names the endpoint and bucket, not the keys.
        """
        text = repr(self.store)
        self.assertIn("metacogna-accounts", text)
        self.assertNotIn(SETTINGS.secret_access_key, text)

    def test_lookup(self) -> None:
        """
        A record is read with a signed path-style GET.
        """
        record = make_record("alice", "wonderland", role="ops")
        self.put("alice", record.to_json())
        found = self.successResultOf(self.store.lookup("alice"))
        self.assertEqual(found, record)
        self.assertTrue(check_password(found, "wonderland"))
        method, uri, headers = self.s3.requests[-1]
        self.assertEqual(method, "GET")
        self.assertEqual(uri, b"/metacogna-accounts/auth/admins/alice.json")
        self.assertIn("x-amz-content-sha256", headers)
        self.assertIn("x-amz-date", headers)

    def test_lookup_original_format(self) -> None:
        """
        A record in the original gateway's format (no role) reads as role
        ``admin``.
        """
        record = make_record("alice", "pw")
        document = json.loads(record.to_json())
        del document["role"]
        self.put("alice", json.dumps(document).encode())
        self.assertEqual(self.successResultOf(self.store.lookup("alice")).role, "admin")

    def test_spaces_and_non_ascii(self) -> None:
        """
        Names with spaces, non-ASCII and reserved characters round-trip;
        the fake checks each path is encoded once, as S3 signs it.
        """
        for name in ("alice smith", "zoë ünïcode", "日本語ユーザー", "a+b!'()*=@:$&,;"):
            record = make_record(name, "pw")
            self.successResultOf(self.store.store(record))
            self.assertIn("auth/admins/%s.json" % (name,), self.s3.objects)
            self.assertEqual(self.successResultOf(self.store.lookup(name)), record)
        _, uri, _ = self.s3.requests[-1]
        self.assertEqual(
            uri,
            b"/metacogna-accounts/auth/admins/"
            b"a%2Bb%21%27%28%29%2A%3D%40%3A%24%26%2C%3B.json",
        )

    def test_lookup_unknown(self) -> None:
        """
        A missing object (404) is :class:`UnknownAccount`, without retries.
        """
        self.failureResultOf(self.store.lookup("nobody"), UnknownAccount)
        self.assertEqual(self.s3.methods(), ["GET"])

    def missing_bucket_store(self) -> R2CredentialStore:
        """
        A store whose bucket the fake does not have (it answers ``404
        NoSuchBucket``, as S3 and R2 do).
        """
        settings = R2Settings(
            SETTINGS.endpoint_url,
            SETTINGS.access_key_id,
            SETTINGS.secret_access_key,
            "no-such-bucket",
            SETTINGS.region,
        )
        return self.make_store(settings)

    def assertBucketNamed(self, failure: Failure) -> None:
        """
        ``failure``'s message and one logged error name the missing bucket
        and its S3 error code; no secret is shown anywhere.
        """
        self.assertIn("no-such-bucket", str(failure.value))
        self.assertIn("404 NoSuchBucket", str(failure.value))
        logged = [
            event
            for event in self.events
            if event.get("bucket") == "no-such-bucket"
            and event["log_level"] == LogLevel.error
        ]
        self.assertTrue(logged, self.events)
        self.assertIn("no-such-bucket", formatEvent(logged[-1]))
        self.assertNoSecretShown(str(failure.value), repr(failure.value))

    def test_lookup_no_such_bucket(self) -> None:
        """
        A ``404 NoSuchBucket`` (a bucket name that is wrong) is
        :class:`StoreUnavailable` naming the bucket, never
        :class:`UnknownAccount`: a misconfigured store must not look like
        wrong passwords. It is not retried.
        """
        store = self.missing_bucket_store()
        self.put("alice", make_record("alice", "pw").to_json())
        failure = self.failureResultOf(store.lookup("alice"), StoreUnavailable)
        self.assertNotIsInstance(failure.value, UnreadableRecord)
        self.assertBucketNamed(failure)
        self.assertEqual(self.s3.methods(), ["GET"])

    def test_no_such_bucket_every_operation(self) -> None:
        """
        Writing, removing and listing in a bucket that does not exist are
        :class:`StoreUnavailable` naming the bucket too; removing asks a
        GET after the HEAD's bodiless 404, and sends no DELETE.
        """
        store = self.missing_bucket_store()
        self.failureResultOf(store.store(make_record("alice", "pw")), StoreUnavailable)
        failure = self.failureResultOf(store.remove("alice"), StoreUnavailable)
        self.assertBucketNamed(failure)
        failure = self.failureResultOf(store.usernames(), StoreUnavailable)
        self.assertBucketNamed(failure)
        self.assertEqual(self.s3.methods(), ["PUT", "HEAD", "GET", "GET"])

    def test_lookup_not_found_without_no_such_key(self) -> None:
        """
        Only a ``404`` whose S3 error document says ``NoSuchKey`` is an
        unknown account. A ``404`` with no body, a body that is not an S3
        error document (an endpoint that is not S3), another code, or a
        ``NoSuchKey`` smuggled in through an entity or a DOCTYPE is
        :class:`StoreUnavailable`.
        """
        doctype = (
            b'<?xml version="1.0"?><!DOCTYPE Error [<!ENTITY c "NoSuchKey">]>'
            b"<Error><Code>&c;</Code></Error>"
        )
        for body in (
            b"",
            b"<html><body>404 Not Found</body></html>",
            b"Not Found",
            b"<Error><Code>NoSuchUpload</Code></Error>",
            b"<Error><Code>NoSuchBucket</Code></Error>",
            b"<NotAnError><Code>NoSuchKey</Code></NotAnError>",
            b"<Error><Code>NoSuchKey</Code>",
            doctype,
            doctype.replace(b"DOCTYPE", b"doctype"),
            b"\xff\xfe" + doctype.decode("ascii").encode("utf-16-le"),
            '<?xml version="1.0" encoding="UTF-16"?>'
            "<Error><Code>NoSuchKey</Code></Error>".encode("utf-16"),
        ):
            self.s3.faults.append((404, body))
            self.failureResultOf(self.store.lookup("alice"), StoreUnavailable)

    def test_lookup_no_such_key_forms(self) -> None:
        """
        ``NoSuchKey`` is recognised in the forms S3 and R2 send it: with or
        without an XML declaration, with a message, request id or the S3
        namespace.
        """
        for body in (
            b"<Error><Code>NoSuchKey</Code></Error>",
            b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
            b"<Message>The specified key does not exist.</Message>"
            b"<Key>auth/admins/alice.json</Key><RequestId>1</RequestId></Error>",
            b'<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<Code>NoSuchKey</Code></Error>",
        ):
            self.s3.faults.append((404, body))
            self.failureResultOf(self.store.lookup("alice"), UnknownAccount)

    def test_login_no_such_bucket(self) -> None:
        """
        Through the gateway, a login against a bucket that does not exist
        is ``503 CREDENTIAL_STORE_UNAVAILABLE`` (route ``AUTH``), not
        ``401 INVALID_CREDENTIALS``.
        """
        h = GatewayHarness(store=self.missing_bucket_store())
        response, body = h.request(
            self,
            "POST",
            "/auth/login",
            data=json.dumps({"username": "alice", "password": "pw"}).encode(),
        )
        assert_json_error(
            self, response, body, 503, "CREDENTIAL_STORE_UNAVAILABLE", "AUTH"
        )
        self.assertNoSecretShown(body.decode("utf-8"))

    def test_lookup_invalid_name(self) -> None:
        """
        A name that could escape its key is never looked up.
        """
        for name in ("../x/y", "a/bcd", "ab", "", "bad\nname", "x" * 200):
            self.failureResultOf(self.store.lookup(name), UnknownAccount)
        self.assertEqual(self.s3.requests, [])

    def test_store(self) -> None:
        """
        A record is written with a signed PUT, in the stored JSON format.
        """
        record = make_record("alice", "pw", role="ops")
        self.successResultOf(self.store.store(record))
        stored = json.loads(self.s3.objects["auth/admins/alice.json"])
        self.assertEqual(set(stored), {"username", "salt", "hash", "role"})
        self.assertEqual(stored["role"], "ops")
        self.assertEqual(self.s3.requests[-1][2]["content-type"], "application/json")

    def test_store_invalid_name(self) -> None:
        """
        Writing a record under a name that could escape its key fails with
        :class:`ValueError` and sends nothing.
        """
        self.failureResultOf(self.store.store(make_record("../evil", "pw")), ValueError)
        self.assertEqual(self.s3.requests, [])

    def test_remove(self) -> None:
        """
        Removing checks the record exists (HEAD), then deletes it.
        """
        self.put("alice", make_record("alice", "pw").to_json())
        self.successResultOf(self.store.remove("alice"))
        self.assertEqual(self.s3.objects, {})
        self.assertEqual(self.s3.methods(), ["HEAD", "DELETE"])

    def test_remove_unknown(self) -> None:
        """
        Removing a missing record is :class:`UnknownAccount` and sends no
        DELETE (S3's DELETE succeeds for missing keys): the HEAD's 404 is
        confirmed by a GET answering ``NoSuchKey``.
        """
        self.failureResultOf(self.store.remove("nobody"), UnknownAccount)
        self.assertEqual(self.s3.methods(), ["HEAD", "GET"])

    def test_usernames_paginated(self) -> None:
        """
        Listing follows every ListObjectsV2 page under ``auth/admins/``
        and keeps only ``{name}.json`` records directly in it.
        """
        names = ["alice", "bob smith", "carol", "zoë", "dave"]
        for name in names:
            self.put(name, b"{}")
        self.s3.objects["auth/admins/nested/eve.json"] = b"{}"
        self.s3.objects["auth/admins/readme.txt"] = b""
        self.s3.objects["auth/other.json"] = b"{}"
        found = self.successResultOf(self.store.usernames())
        self.assertEqual(found, sorted(names))
        self.assertEqual(self.s3.methods(), ["GET"] * 4)
        _, first, _ = self.s3.requests[0]
        self.assertEqual(
            first, b"/metacogna-accounts?list-type=2&prefix=auth%2Fadmins%2F"
        )
        _, second, _ = self.s3.requests[1]
        self.assertIn(b"continuation-token=t%2B%2F%3D", second)

    def test_usernames_empty(self) -> None:
        """
        An empty bucket lists no names.
        """
        self.assertEqual(self.successResultOf(self.store.usernames()), [])

    def test_usernames_bad_xml(self) -> None:
        """
        A listing that is not XML, or declares a DOCTYPE, is
        :class:`StoreUnavailable`.
        """
        self.s3.faults.append((200, b"not xml"))
        self.failureResultOf(self.store.usernames(), StoreUnavailable)
        self.s3.faults.append(
            (200, b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>')
        )
        self.failureResultOf(self.store.usernames(), StoreUnavailable)

    def test_usernames_doctype_in_other_encoding(self) -> None:
        """
        A listing in UTF-16 cannot hide a DOCTYPE from the check: anything
        but UTF-8 is :class:`StoreUnavailable`.
        """
        listing = (
            '<?xml version="1.0" encoding="UTF-16"?>'
            '<!DOCTYPE x [<!ENTITY a "auth/admins/mallory.json">]>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            "<IsTruncated>false</IsTruncated>"
            "<Contents><Key>&a;</Key></Contents></ListBucketResult>"
        )
        self.s3.faults.append((200, listing.encode("utf-16")))
        self.failureResultOf(self.store.usernames(), StoreUnavailable)

    def test_usernames_deeply_nested(self) -> None:
        """
        A listing nested deeply (within its size cap) is searched along
        ``ListBucketResult/Contents/Key`` only: no names, and no
        ``RecursionError`` (a recursive search overflows on PyPy).
        """
        depth = 100000
        listing = (
            b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            + b"<Contents>" * depth
            + b"<Key>auth/admins/deep.json</Key>"
            + b"</Contents>" * depth
            + b"<IsTruncated>false</IsTruncated></ListBucketResult>"
        )
        self.s3.faults.append((200, listing))
        self.assertEqual(self.successResultOf(self.store.usernames()), [])

    def test_wrong_secret(self) -> None:
        """
        A refused signature (403) is :class:`StoreUnavailable`, not retried,
        and the secret appears in no message or log event.
        """
        settings = R2Settings(
            SETTINGS.endpoint_url,
            SETTINGS.access_key_id,
            "wrong/secret+key",
            SETTINGS.bucket,
            SETTINGS.region,
        )
        store = self.make_store(settings)
        self.put("alice", make_record("alice", "pw").to_json())
        failure = self.failureResultOf(store.lookup("alice"), StoreUnavailable)
        self.assertIn("403", str(failure.value))
        self.assertIn("SignatureDoesNotMatch", str(failure.value))
        self.assertEqual(self.s3.methods(), ["GET"])
        self.assertNoSecretShown(str(failure.value), repr(failure.value))
        self.assertNotIn("wrong/secret+key", str(failure.value))

    def test_wrong_access_key(self) -> None:
        """
        An unknown access key (403) is :class:`StoreUnavailable`.
        """
        settings = R2Settings(
            SETTINGS.endpoint_url, "AKIDOTHER", SETTINGS.secret_access_key
        )
        store = self.make_store(settings)
        self.failureResultOf(store.lookup("alice"), StoreUnavailable)

    def test_clock_skew(self) -> None:
        """
        A signing time far from the server's (403 RequestTimeTooSkewed) is
        :class:`StoreUnavailable`.
        """
        self.s3.clock = Clock()
        failure = self.failureResultOf(self.store.lookup("alice"), StoreUnavailable)
        self.assertIn("RequestTimeTooSkewed", str(failure.value))

    def test_other_client_error(self) -> None:
        """
        Another 4xx is :class:`StoreUnavailable`, not retried, for every
        operation.
        """
        for call in (
            lambda: self.store.lookup("alice"),
            lambda: self.store.store(make_record("alice", "pw")),
            lambda: self.store.remove("alice"),
            self.store.usernames,
        ):
            self.s3.requests.clear()
            self.s3.faults.append(400)
            self.failureResultOf(call(), StoreUnavailable)
            self.assertEqual(len(self.s3.requests), 1)

    def test_redirect_not_followed(self) -> None:
        """
        A redirect is not followed: :class:`StoreUnavailable`.
        """
        self.s3.faults.append(301)
        self.failureResultOf(self.store.lookup("alice"), StoreUnavailable)
        self.assertEqual(len(self.s3.requests), 1)

    def test_server_error_retried(self) -> None:
        """
        A 5xx is retried after the backoff; a later success answers.
        """
        self.put("alice", make_record("alice", "pw").to_json())
        self.s3.faults.extend([500, 503])
        d = self.store.lookup("alice")
        self.assertNoResult(d)
        self.assertEqual(len(self.s3.requests), 1)
        self.clock.advance(0.19)
        self.assertEqual(len(self.s3.requests), 1)
        self.clock.advance(0.01)
        self.assertEqual(len(self.s3.requests), 2)
        self.clock.advance(0.39)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d).username, "alice")
        self.assertEqual(len(self.s3.requests), 3)

    def test_server_error_exhausted(self) -> None:
        """
        After ``retries`` retries of a 5xx the call is
        :class:`StoreUnavailable`, and no more requests follow.
        """
        self.s3.faults.extend([500, 502, 503, 504])
        d = self.store.lookup("alice")
        self.clock.advance(0.2)
        self.clock.advance(0.4)
        failure = self.failureResultOf(d, StoreUnavailable)
        self.assertIn("503", str(failure.value))
        self.assertEqual(len(self.s3.requests), 3)
        self.clock.advance(10)
        self.assertEqual(len(self.s3.requests), 3)

    def test_connection_error_retried(self) -> None:
        """
        Connection errors are retried with backoff; the store recovers by
        itself once the server answers.
        """
        self.put("alice", make_record("alice", "pw").to_json())
        self.client.errors.extend([ConnectionRefusedError(), DNSLookupError("nope")])
        d = self.store.lookup("alice")
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertNoResult(d)
        self.clock.advance(0.4)
        self.assertEqual(self.successResultOf(d).username, "alice")
        self.assertEqual(self.client.attempts, 3)

    def test_connection_error_exhausted(self) -> None:
        """
        A server that stays unreachable is :class:`StoreUnavailable`, well
        within the timeout; the next call works again once it is back.
        """
        self.client.errors.extend(
            [
                ConnectionRefusedError(),
                ResponseNeverReceived([Failure(ConnectionRefusedError())]),
                ConnectionRefusedError(),
            ]
        )
        d = self.store.lookup("alice")
        self.clock.advance(0.2)
        self.clock.advance(0.4)
        failure = self.failureResultOf(d, StoreUnavailable)
        self.assertIn("cannot reach R2", str(failure.value))
        self.put("alice", make_record("alice", "pw").to_json())
        self.assertEqual(
            self.successResultOf(self.store.lookup("alice")).username, "alice"
        )

    def test_timeout(self) -> None:
        """
        A server that never answers makes the call
        :class:`StoreUnavailable` after ``timeout`` seconds.
        """
        self.s3.faults.append(HANG)
        d = self.store.lookup("alice")
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, StoreUnavailable)
        self.assertIn("5 seconds", str(failure.value))
        self.assertEqual(len(self.s3.requests), 1)

    def test_timeout_covers_retries(self) -> None:
        """
        The timeout bounds the whole call, retries and backoff included.
        """
        store = self.make_store(timeout=1.0, backoff=0.75)
        self.s3.faults.extend([500, HANG])
        d = store.lookup("alice")
        self.clock.advance(0.75)
        self.assertEqual(len(self.s3.requests), 2)
        self.clock.advance(0.25)
        self.failureResultOf(d, StoreUnavailable)
        self.clock.advance(10)
        self.assertEqual(len(self.s3.requests), 2)

    def test_timeout_during_backoff(self) -> None:
        """
        A timeout while waiting to retry ends the call; no retry follows.
        """
        store = self.make_store(timeout=1.0, backoff=5.0)
        self.s3.faults.append(503)
        d = store.lookup("alice")
        self.clock.advance(1.0)
        self.failureResultOf(d, StoreUnavailable)
        self.clock.advance(10)
        self.assertEqual(len(self.s3.requests), 1)

    def test_cancel(self) -> None:
        """
        A caller that cancels gets :class:`CancelledError`, not a store
        fault, and nothing is retried.
        """
        self.s3.faults.append(HANG)
        d = self.store.lookup("alice")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(10)
        self.assertEqual(len(self.s3.requests), 1)

    def test_unreadable_records(self) -> None:
        """
        A record that is not JSON, not UTF-8, not an object, or lacks its
        hash is :class:`UnreadableRecord` (a :class:`StoreUnavailable`).
        """
        for data in (
            b"not json",
            b"\xff\xfe",
            b"[1, 2]",
            b'{"salt": "x"}',
            b'{"salt": "x", "hash": "y", "role": 7}',
        ):
            self.put("alice", data)
            self.failureResultOf(self.store.lookup("alice"), UnreadableRecord)

    def test_deeply_nested_record(self) -> None:
        """
        A record of JSON nested deeper than the parser goes is
        :class:`UnreadableRecord` (``503`` at login), not a
        ``RecursionError`` (a ``500``).
        """
        for data in (
            b"[" * 1000,
            b"[" * 60000 + b"]" * 60000,
            b'{"a":' + b"[" * 60000,
            b'{"salt": "s", "hash": "h", "params": ' + b'{"a":' * 12000,
        ):
            self.put("alice", data)
            self.failureResultOf(self.store.lookup("alice"), UnreadableRecord)

    def test_record_too_large(self) -> None:
        """
        A record over the size cap is :class:`UnreadableRecord`.
        """
        self.put("alice", b" " * (MAX_RECORD_BYTES + 1))
        self.failureResultOf(self.store.lookup("alice"), UnreadableRecord)

    def test_error_body_too_large(self) -> None:
        """
        An error answer with a huge body is :class:`StoreUnavailable`.
        """
        self.s3.faults.append((404, b"x" * (MAX_RECORD_BYTES + 1)))
        self.failureResultOf(self.store.lookup("alice"), StoreUnavailable)
