"""
What S3 speaks, for the R2 store (:mod:`metagateway.credentials.r2`):
requests signed with AWS Signature Version 4 (botocore's
:class:`S3SigV4Auth` does the signing, and nothing else: no botocore I/O),
object keys and query strings encoded as that signature expects, and the
XML documents S3 answers, parsed with care.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Mapping
from urllib.parse import quote
from xml.etree import ElementTree

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from metagateway.credentials.interfaces import StoreUnavailable

#: The SigV4 timestamp format.
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"

#: The namespace of S3's XML documents.
S3_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"

#: Where ListObjectsV2 puts each key, below its ListBucketResult.
CONTENTS_KEY = "%sContents/%sKey" % (S3_NAMESPACE, S3_NAMESPACE)


def encode_key(key: str) -> str:
    """
    Percent-encode an object key for a URL path, as S3's SigV4 expects.

    Every byte of the UTF-8 encoding is escaped except the unreserved
    characters (``A-Z a-z 0-9 - _ . ~``) and ``/``, which separates key
    segments; a space becomes ``%20``, never ``+``.

    :param key: the object key.
    :return: the encoded key, ASCII only.
    """
    return quote(key, safe="/~")


def encode_query(params: Mapping[str, str]) -> str:
    """
    A canonical SigV4 query string: names sorted, every name and value
    percent-encoded (only unreserved characters kept).

    :param params: query parameter names to values.
    """
    pairs = sorted(
        (quote(name, safe="-_.~"), quote(value, safe="-_.~"))
        for name, value in params.items()
    )
    return "&".join("%s=%s" % pair for pair in pairs)


def sign_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    when: datetime.datetime,
) -> dict[str, str]:
    """
    Sign a request for S3 with Signature Version 4.

    The URL's path and query must already be encoded (see
    :func:`encode_key`, :func:`encode_query`): S3 signs the path as sent,
    without normalising or encoding it again. ``X-Amz-Date`` and
    ``X-Amz-Content-SHA256`` (the hex SHA-256 of ``body``) are set here;
    every header given is signed along with ``Host``.

    :param method: the HTTP method.
    :param url: the full request URL.
    :param headers: further headers to send and sign.
    :param body: the request body (``b""`` for none).
    :param access_key_id: the access key id.
    :param secret_access_key: the secret key; it appears in no result.
    :param region: the SigV4 region (``auto`` for R2).
    :param when: the signing time, timezone-aware.
    :return: every header to send, ``Authorization`` included.
    """
    timestamp = when.astimezone(datetime.timezone.utc).strftime(SIGV4_TIMESTAMP)
    signer = S3SigV4Auth(Credentials(access_key_id, secret_access_key), "s3", region)
    request = AWSRequest(method=method, url=url, data=body)
    for name, value in headers.items():
        request.headers[name] = value
    request.context["timestamp"] = timestamp
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
        if name in request.headers:
            del request.headers[name]
    request.headers["X-Amz-Date"] = timestamp
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    signed = signer.headers_to_sign(request)
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    result = {name: str(value) for name, value in request.headers.items()}
    result["Host"] = signed["host"]
    result["Authorization"] = (
        "AWS4-HMAC-SHA256 Credential=%s, SignedHeaders=%s, Signature=%s"
        % (signer.scope(request), signer.signed_headers(signed), signature)
    )
    return result


def error_code(body: bytes) -> str:
    """
    The ``<Code>`` of an S3 error document (``<Error><Code>NoSuchKey</Code>
    ...</Error>``), letters and digits only, or ``""`` when ``body`` is not
    such a document.

    :param body: the answer's body, already read up to its cap.
    """
    try:
        root = parse_xml(body)
    except StoreUnavailable:
        return ""
    if root.tag not in ("Error", S3_NAMESPACE + "Error"):
        return ""
    code = root.findtext("Code") or root.findtext(S3_NAMESPACE + "Code") or ""
    return "".join(c for c in code[:64] if c.isalnum())


def parse_xml(body: bytes) -> ElementTree.Element:
    """
    Parse an XML document from the store.

    The body has already been read up to a cap (see
    :meth:`~metagateway.credentials.r2.R2CredentialStore._call`). It must
    be UTF-8, as S3 and R2 send it: the text is checked,
    then parsed as text, so an encoding declaration or byte-order mark
    cannot hide a document type declaration from the check. Without one, a
    document cannot declare entities, so nothing is expanded or fetched.

    :param body: the bytes of the answer.
    :raises StoreUnavailable: if it is not UTF-8, not well-formed, or has
        a DOCTYPE or ENTITY declaration.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreUnavailable("R2 answered XML that is not UTF-8") from None
    upper = text.upper()
    if "<!DOCTYPE" in upper or "<!ENTITY" in upper:
        raise StoreUnavailable("R2 answered an XML document with a DOCTYPE")
    try:
        return ElementTree.fromstring(text)  # noqa: S314 (DOCTYPE refused above)
    except ElementTree.ParseError:
        raise StoreUnavailable("R2 answered XML that cannot be parsed") from None
