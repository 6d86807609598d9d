"""
Password hashing and checking for account records.

The original format is ``hash = base64(SHA-256(utf8(salt + password)))``;
records may instead say ``"scheme": "scrypt"`` with their parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any, Mapping, Optional

from metagateway.credentials.interfaces import AccountRecord

#: scrypt parameters written by default: about 16 MiB and tens of ms.
SCRYPT_DEFAULTS = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

#: Upper bounds on stored scrypt parameters, so a record cannot make a
#: login burn unbounded memory or CPU.
_SCRYPT_MAX_N = 2**20
_SCRYPT_MAX_R = 32
_SCRYPT_MAX_P = 16


class BadParameters(ValueError):
    """
    A record's scheme parameters are out of bounds.
    """


def new_salt() -> str:
    """
    A fresh random salt: 16 random bytes as 32 hex digits.
    """
    return secrets.token_hex(16)


def sha256_hash(salt: str, password: str) -> str:
    """
    The original format's hash of ``password`` under ``salt``.
    """
    digest = hashlib.sha256((salt + password).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def _scrypt_params(params: Mapping[str, Any]) -> tuple[int, int, int, int]:
    merged = dict(SCRYPT_DEFAULTS)
    merged.update(params)
    try:
        n, r, p, dklen = (int(merged[k]) for k in ("n", "r", "p", "dklen"))
    except (TypeError, ValueError):
        raise BadParameters("scrypt parameters are not integers") from None
    if (
        n < 2
        or n & (n - 1)
        or n > _SCRYPT_MAX_N
        or not 0 < r <= _SCRYPT_MAX_R
        or not 0 < p <= _SCRYPT_MAX_P
        or not 16 <= dklen <= 64
    ):
        raise BadParameters("scrypt parameters out of bounds")
    return n, r, p, dklen


def scrypt_hash(salt: str, password: str, params: Mapping[str, Any]) -> str:
    """
    The scrypt scheme's hash of ``password`` under ``salt``.

    :raises BadParameters: if ``params`` are out of bounds.
    """
    n, r, p, dklen = _scrypt_params(params)
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt.encode("utf-8"),
        n=n,
        r=r,
        p=p,
        dklen=dklen,
        maxmem=256 * 1024 * 1024,
    )
    return base64.b64encode(digest).decode("ascii")


def make_record(
    username: str,
    password: str,
    role: str = "admin",
    scheme: str = "sha256",
    params: Optional[Mapping[str, Any]] = None,
) -> AccountRecord:
    """
    A new record for ``username`` with a fresh random salt.

    :param scheme: ``sha256`` (the original format) or ``scrypt``.
    """
    salt = new_salt()
    if scheme == "sha256":
        return AccountRecord(username, salt, sha256_hash(salt, password), role)
    if scheme == "scrypt":
        chosen = dict(SCRYPT_DEFAULTS if params is None else params)
        return AccountRecord(
            username,
            salt,
            scrypt_hash(salt, password, chosen),
            role,
            "scrypt",
            chosen,
        )
    raise ValueError("unknown scheme %r" % (scheme,))


def check_password(record: AccountRecord, password: str) -> bool:
    """
    Whether ``password`` matches ``record``, compared in constant time.

    :raises BadParameters: if the record's scheme parameters are unusable.
    """
    if record.scheme == "scrypt":
        computed = scrypt_hash(record.salt, password, record.params)
    else:
        computed = sha256_hash(record.salt, password)
    return hmac.compare_digest(computed.encode("ascii"), record.hash.encode("utf-8"))


#: A record used to spend the same work on unknown users as on known ones.
DECOY_RECORD = AccountRecord("decoy", new_salt(), sha256_hash("x", "y"))
