"""
The credential-store interface, the account record, and its failures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from zope.interface import Interface

from twisted.internet.defer import Deferred

#: Longest username, in UTF-8 bytes, that is ever looked up.
MAX_USERNAME_BYTES = 128

#: Shortest username that can hold a token (``projectId`` needs 4).
MIN_USERNAME_CHARS = 4


class UnknownAccount(Exception):
    """
    No record exists for the username. Logins answer ``401``.
    """


class StoreUnavailable(Exception):
    """
    The store could not answer: down, timed out, refused our credentials, or
    returned a record that cannot be read. Logins fail closed with ``503``:
    never ``401``, never a token.
    """


class UnreadableRecord(StoreUnavailable):
    """
    A record exists but is not a readable account record.
    """


def is_valid_username(username: str) -> bool:
    """
    Whether ``username`` may be looked up and hold a token.

    A name that could escape its key (``/``, ``\\``, ``..``, control
    characters, empty, over 128 UTF-8 bytes) or is shorter than 4 characters
    is refused.

    :param username: the name as the client sent it.
    """
    if not isinstance(username, str):
        return False
    if len(username) < MIN_USERNAME_CHARS:
        return False
    try:
        encoded = username.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if len(encoded) > MAX_USERNAME_BYTES:
        return False
    if "/" in username or "\\" in username or ".." in username:
        return False
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in username):
        return False
    return True


def record_key(username: str) -> str:
    """
    The bucket key (or relative file path) of ``username``'s record.

    :param username: a name for which :func:`is_valid_username` holds.
    """
    return "auth/admins/%s.json" % (username,)


def _refuse_constant(name: str) -> Any:
    """
    Refuse ``NaN``, ``Infinity`` and ``-Infinity``, which Python's JSON
    parser accepts but JSON does not have.

    :raises ValueError: always.
    """
    raise ValueError("not JSON: %s" % (name,))


def _finite_float(text: str) -> float:
    """
    A JSON number with a fraction or exponent, refused when it is too large
    to be finite (``1e400``).

    :raises ValueError: for a number that is not finite.
    """
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _is_utf8(value: str) -> bool:
    """
    Whether ``value`` can be encoded as UTF-8 (JSON's ``\\ud800`` escapes
    give lone surrogates, which cannot).
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class AccountRecord:
    """
    One stored account.

    :ivar username: the account name (the record's, else the looked-up one).
    :ivar salt: the salt, as stored.
    :ivar hash: the stored password hash, standard padded base64.
    :ivar role: the role, ``admin`` unless the record says otherwise.
    :ivar scheme: ``sha256`` (the original format) or ``scrypt``.
    :ivar params: scheme parameters (scrypt's ``n``, ``r``, ``p``).
    """

    username: str
    salt: str
    hash: str = field(repr=False)
    role: str = "admin"
    scheme: str = "sha256"
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes, username: str) -> AccountRecord:
        """
        Parse a stored record.

        Everything that can go wrong with stored bytes is
        :class:`UnreadableRecord`, never another exception: bytes that are
        not UTF-8, not JSON (``NaN`` and ``Infinity`` included, and numbers
        too large to be finite), JSON nested too deeply for the parser
        (``RecursionError``), a document that is not an object, and fields
        of the wrong type or holding strings that cannot be encoded as
        UTF-8 (lone surrogates, which would fail later, mid-login).

        :param data: the stored bytes.
        :param username: the name the record was looked up under.
        :raises UnreadableRecord: if ``data`` is not a well-formed record.
        """
        try:
            document = json.loads(
                data.decode("utf-8"),
                parse_constant=_refuse_constant,
                parse_float=_finite_float,
            )
        except (UnicodeDecodeError, ValueError, TypeError):
            raise UnreadableRecord("record is not JSON") from None
        except RecursionError:
            raise UnreadableRecord("record is JSON nested too deeply") from None
        if not isinstance(document, dict):
            raise UnreadableRecord("record is not a JSON object")
        salt = document.get("salt")
        stored_hash = document.get("hash")
        if not isinstance(salt, str) or not isinstance(stored_hash, str):
            raise UnreadableRecord("record lacks salt or hash")
        name = document.get("username", username)
        role = document.get("role", "admin")
        scheme = document.get("scheme", "sha256")
        params = document.get("params", {})
        if not isinstance(name, str) or not name:
            raise UnreadableRecord("record has a bad username")
        if role is None:
            role = "admin"
        if not isinstance(role, str) or not role:
            raise UnreadableRecord("record has a bad role")
        if scheme not in ("sha256", "scrypt") or not isinstance(params, dict):
            raise UnreadableRecord("record has an unknown scheme")
        if not all(_is_utf8(text) for text in (name, salt, stored_hash, role)):
            raise UnreadableRecord("record holds text that is not UTF-8")
        return cls(name, salt, stored_hash, role, scheme, dict(params))

    def to_json(self) -> bytes:
        """
        Serialise this record in the stored format.

        The original format (``username``, ``salt``, ``hash``, ``role``) is
        written for ``sha256``; ``scheme`` and ``params`` are added only for
        other schemes.
        """
        document: dict[str, Any] = {
            "username": self.username,
            "salt": self.salt,
            "hash": self.hash,
            "role": self.role,
        }
        if self.scheme != "sha256":
            document["scheme"] = self.scheme
            document["params"] = dict(self.params)
        return json.dumps(document, indent=2).encode("utf-8") + b"\n"


class ICredentialStore(Interface):
    """
    A read-only source of account records.
    """

    def lookup(username: str) -> Deferred[AccountRecord]:
        """
        Find ``username``'s record.

        :param username: a name for which :func:`is_valid_username` holds.
        :return: a Deferred firing with the :class:`AccountRecord`, or
            failing with :class:`UnknownAccount` when there is none, or with
            :class:`StoreUnavailable` when the store cannot answer.
        """


class IWritableCredentialStore(ICredentialStore):
    """
    A credential store that accounts can be written to (the admin tool).
    """

    def store(record: AccountRecord) -> Deferred[None]:
        """
        Write ``record`` under its username, replacing any earlier one.

        :return: a Deferred firing with ``None``, or failing with
            :class:`StoreUnavailable`.
        """

    def remove(username: str) -> Deferred[None]:
        """
        Delete ``username``'s record.

        :return: a Deferred firing with ``None``, or failing with
            :class:`UnknownAccount` when there is none, or with
            :class:`StoreUnavailable`.
        """

    def usernames() -> Deferred[list[str]]:
        """
        List the stored usernames, sorted.

        :return: a Deferred firing with the list, or failing with
            :class:`StoreUnavailable`.
        """


def optional_role(role: Optional[str]) -> str:
    """
    The role a token carries for a stored role (``admin`` by default).
    """
    return role or "admin"
