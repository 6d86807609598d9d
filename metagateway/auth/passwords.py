"""
Password hashing and checking for account records.

The original format is ``hash = base64(SHA-256(utf8(salt + password)))``;
records may instead say ``"scheme": "scrypt"`` with their parameters.

An unknown username is checked against a decoy record, so that it costs
what a known one costs. The decoy follows the most expensive scheme and
parameters seen on any real record since it was made (see :class:`Decoys`;
each gateway keeps its own): in a store of original SHA-256 records it is a SHA-256
record, in a store of scrypt records it becomes an scrypt record with the
same parameters as soon as the first real record has been read. A record
cheaper than the decoy is checked and then padded with the decoy's work.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from metagateway.credentials.interfaces import AccountRecord

#: scrypt parameters written by default: about 16 MiB and tens of ms.
SCRYPT_DEFAULTS = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

#: Upper bounds on stored scrypt parameters, so a record cannot make a
#: login burn unbounded memory or CPU.
_SCRYPT_MAX_N = 2**20
_SCRYPT_MAX_R = 32
_SCRYPT_MAX_P = 16

#: The most memory (``128 * n * r`` bytes) a record's scrypt may use.
SCRYPT_MAX_MEMORY = 128 * 1024 * 1024


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
        or 128 * n * r > SCRYPT_MAX_MEMORY
    ):
        raise BadParameters("scrypt parameters out of bounds")
    return n, r, p, dklen


def scrypt_cost(params: Mapping[str, Any]) -> int:
    """
    The relative work of checking a password under scrypt ``params``
    (``n * r * p``).

    :raises BadParameters: if ``params`` are out of bounds.
    """
    n, r, p, _ = _scrypt_params(params)
    return n * r * p


def scrypt_hash(salt: str, password: str, params: Mapping[str, Any]) -> str:
    """
    The scrypt scheme's hash of ``password`` under ``salt``.

    :raises BadParameters: if ``params`` are out of bounds.
    """
    n, r, p, dklen = _scrypt_params(params)
    if not hasattr(hashlib, "scrypt"):
        # PyPy's hashlib has no scrypt.
        digest = _scrypt_without_hashlib(
            password.encode("utf-8"), salt.encode("utf-8"), n, r, p, dklen
        )
        return base64.b64encode(digest).decode("ascii")
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt.encode("utf-8"),
        n=n,
        r=r,
        p=p,
        dklen=dklen,
        # OpenSSL needs a little over 128 * n * r bytes.
        maxmem=SCRYPT_MAX_MEMORY + 1024 * 1024,
    )
    return base64.b64encode(digest).decode("ascii")


#: ``(ffi, lib)`` for OpenSSL's ``EVP_PBE_scrypt``; False once it could
#: not be loaded; None before the first try.
_libcrypto: Any = None
_libcrypto_lock = threading.Lock()


def _libcrypto_scrypt() -> Any:
    """
    OpenSSL's ``EVP_PBE_scrypt`` loaded with cffi, as ``(ffi, lib)``, or
    None where cffi or ``libcrypto`` is missing.
    """
    global _libcrypto
    with _libcrypto_lock:
        if _libcrypto is None:
            _libcrypto = False
            try:
                import ctypes.util
                import importlib

                # Imported by name: cffi ships no type information.
                cffi = importlib.import_module("cffi")
                name = ctypes.util.find_library("crypto")
                if name:
                    ffi = cffi.FFI()
                    ffi.cdef(
                        "int EVP_PBE_scrypt(const char *pass, size_t passlen,"
                        " const unsigned char *salt, size_t saltlen,"
                        " uint64_t N, uint64_t r, uint64_t p, uint64_t maxmem,"
                        " unsigned char *key, size_t keylen);"
                    )
                    _libcrypto = (ffi, ffi.dlopen(name))
            except Exception:  # no cffi, no such library or symbol
                _libcrypto = False
    return _libcrypto or None


def _scrypt_without_hashlib(
    password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int
) -> bytes:
    """
    scrypt where ``hashlib`` has none (PyPy): OpenSSL's, called through
    cffi, which lets go of the interpreter lock while it derives, as
    ``hashlib.scrypt`` does. The ``cryptography`` releases that run on
    PyPy 3.9 (below 44) hold the lock for the whole derivation, so a
    login checked in the thread pool would stop the reactor thread for
    as long: they are only the fallback when ``libcrypto`` cannot be
    loaded.
    """
    loaded = _libcrypto_scrypt()
    if loaded is not None:
        ffi, lib = loaded
        key = ffi.new("unsigned char[]", dklen)
        maxmem = SCRYPT_MAX_MEMORY + 1024 * 1024
        if lib.EVP_PBE_scrypt(
            password, len(password), salt, len(salt), n, r, p, maxmem, key, dklen
        ):
            return bytes(ffi.buffer(key, dklen))
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt, dklen, n, r, p).derive(password)


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
    return hmac.compare_digest(
        computed.encode("ascii"), record.hash.encode("utf-8", "surrogatepass")
    )


def _decoy(scheme: str, params: Mapping[str, Any]) -> AccountRecord:
    salt = new_salt()
    secret = secrets.token_hex(16)
    if scheme == "scrypt":
        return AccountRecord(
            "decoy", salt, scrypt_hash(salt, secret, params), "admin", "scrypt", params
        )
    return AccountRecord("decoy", salt, sha256_hash(salt, secret))


#: The original-format decoy: what an unknown user is checked against until
#: a more expensive real record has been seen.
DECOY_RECORD = _decoy("sha256", {})


class Decoys:
    """
    The decoy record an unknown username is checked against.

    It starts as a SHA-256 record (the original format, and the default of
    ``metagateway-admin``) and is replaced, for good, by one with the scheme
    and parameters of the most expensive real record checked so far. An
    unknown username then costs what the store's strongest records cost.

    In a store that mixes schemes, :func:`check_login` pads the check of a
    cheaper record with the decoy's, so that those accounts are not told
    apart from unknown names by timing either (at the price of their
    logins costing what the strongest records cost).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cost = 0
        self.record = DECOY_RECORD

    @property
    def cost(self) -> int:
        """
        The work of checking the decoy (0 for the SHA-256 one).
        """
        return self._cost

    def learn(self, record: AccountRecord) -> None:
        """
        Take note of a real record's scheme and parameters.

        :raises BadParameters: if the record's parameters are unusable.
        """
        cost = _cost(record)
        if cost <= self._cost:
            return
        params = dict(SCRYPT_DEFAULTS)
        params.update(record.params)
        decoy = _decoy("scrypt", params)
        with self._lock:
            if cost > self._cost:
                self._cost = cost
                self.record = decoy


#: The decoys of this process.
DECOYS = Decoys()


def check_login(
    record: Optional[AccountRecord], password: str, decoys: Decoys = DECOYS
) -> bool:
    """
    Whether ``password`` opens ``record``, spending the same work when
    there is no record (an unknown username) as when there is one.

    :param record: the account's record, or ``None`` when there is none.
    :param decoys: the decoy records to spend that work on.
    :return: ``False`` whenever ``record`` is ``None``.
    :raises BadParameters: if the record's scheme parameters are unusable.
    """
    if record is None:
        check_password(decoys.record, password)
        return False
    matched = check_password(record, password)
    decoys.learn(record)
    if _cost(record) < decoys.cost:
        # A record cheaper than the strongest seen (a SHA-256 one in a
        # store moving to scrypt) is padded with the decoy's work, so that
        # its logins take as long as an unknown username's.
        check_password(decoys.record, password)
    return matched


def _cost(record: AccountRecord) -> int:
    """
    The work of checking ``record``: ``n * r * p`` for scrypt, 0 for the
    (microsecond) SHA-256 scheme.
    """
    if record.scheme != "scrypt":
        return 0
    params = dict(SCRYPT_DEFAULTS)
    params.update(record.params)
    return scrypt_cost(params)


#: Threads of a gateway's password pool: at most this many scrypt checks
#: run at once (each may hold up to :data:`SCRYPT_MAX_MEMORY`), and the
#: others wait their turn, leaving the other cores to the reactor.
PASSWORD_THREADS = 2


class PasswordChecks:
    """
    Runs :func:`check_login` without holding up the reactor.

    An scrypt check takes tens of milliseconds of CPU; on the reactor
    thread every other request would wait for it. While this object is
    started, such checks (a record, or the decoy for an unknown username,
    of the scrypt scheme) run on a small thread pool of its own, separate
    from the reactor's, so upstream DNS lookups never queue behind them.
    SHA-256 checks take microseconds and stay on the calling thread, as
    does every check while the pool is not started.

    :param reactor: gets the results back from the pool's threads; the
        pool is never used if ``None``.
    :param decoys: the decoy records of unknown usernames.
    :param threads: the most checks run at once.
    """

    def __init__(
        self,
        reactor: Any = None,
        decoys: Optional[Decoys] = None,
        threads: int = PASSWORD_THREADS,
    ) -> None:
        self.reactor = reactor
        self.decoys = decoys if decoys is not None else Decoys()
        self.pool = ThreadPool(0, threads, "metagateway-passwords")

    def start(self) -> None:
        """
        Check scrypt passwords on the pool from now on.
        """
        if self.reactor is not None and not self.pool.started:
            self.pool.start()

    def stop(self) -> None:
        """
        Wait for the checks running on the pool, then stop it; checks run
        on the calling thread again.
        """
        if self.pool.started:
            self.pool.stop()

    def check(self, record: Optional[AccountRecord], password: str) -> Deferred[bool]:
        """
        :func:`check_login` of ``record`` and ``password`` with this
        object's decoys.

        :return: a Deferred firing with whether ``password`` opens
            ``record``, or failing with :class:`BadParameters`.
        """
        slow = self.decoys.record.scheme == "scrypt" or (
            record is not None and record.scheme == "scrypt"
        )
        if slow and self.pool.started:
            return deferToThreadPool(
                self.reactor, self.pool, check_login, record, password, self.decoys
            )
        return maybeDeferred(check_login, record, password, self.decoys)
