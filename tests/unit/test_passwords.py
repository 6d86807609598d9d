"""
Tests for :mod:`metagateway.auth.passwords`: the original SHA-256 records,
scrypt records, constant-work checks for unknown users.
"""

from __future__ import annotations

import base64
import hashlib
import json

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from metagateway.auth import passwords
from metagateway.auth.passwords import (
    DECOY_RECORD,
    SCRYPT_DEFAULTS,
    BadParameters,
    Decoys,
    PasswordChecks,
    check_login,
    check_password,
    make_record,
    new_salt,
    scrypt_cost,
    scrypt_hash,
    sha256_hash,
)
from metagateway.credentials.interfaces import AccountRecord
from metagateway.testing import FakeThreadPool, ImmediateReactor

#: RFC 7914's scrypt test vector: P "password", S "NaCl", N 1024, r 8,
#: p 16, 64 bytes.
RFC7914 = bytes.fromhex(
    "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
    "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
)

#: Cheap scrypt parameters, so the tests stay fast.
FAST = {"n": 2**8, "r": 8, "p": 1, "dklen": 32}


class Sha256Tests(SynchronousTestCase):
    """
    The original format: ``base64(SHA-256(utf8(salt + password)))``.
    """

    def test_formula(self) -> None:
        """
        The hash is standard padded base64 of SHA-256 over the UTF-8 of the
        salt followed by the password.
        """
        expected = base64.b64encode(
            hashlib.sha256("pepperpässwörd".encode()).digest()
        ).decode("ascii")
        self.assertEqual(sha256_hash("pepper", "pässwörd"), expected)
        self.assertTrue(expected.endswith("="))

    def test_original_record(self) -> None:
        """
        A record as the original gateway's tools wrote it (no ``scheme``)
        is read and checked unchanged.
        """
        stored = json.dumps(
            {
                "username": "alice",
                "salt": "s4lt",
                "hash": sha256_hash("s4lt", "secret"),
                "role": "admin",
            }
        ).encode()
        record = AccountRecord.from_json(stored, "alice")
        self.assertEqual(record.scheme, "sha256")
        self.assertTrue(check_password(record, "secret"))
        self.assertFalse(check_password(record, "Secret"))
        self.assertFalse(check_password(record, ""))

    def test_make_record(self) -> None:
        """
        ``make_record`` writes the original format by default, with a fresh
        32-hex-digit salt each time.
        """
        one = make_record("alice", "pw")
        two = make_record("alice", "pw")
        self.assertEqual(one.scheme, "sha256")
        self.assertNotEqual(one.salt, two.salt)
        self.assertRegex(one.salt, "^[0-9a-f]{32}$")
        self.assertTrue(check_password(one, "pw"))
        self.assertEqual(
            set(json.loads(one.to_json())), {"username", "salt", "hash", "role"}
        )

    def test_odd_stored_hashes(self) -> None:
        """
        A stored hash of the wrong length, not base64, or holding characters
        that cannot be encoded never matches and never raises.
        """
        for stored in ("", "short", "é" * 44, "\ud800" * 44, "=" * 44):
            record = AccountRecord("alice", "salt", stored)
            self.assertFalse(check_password(record, "pw"))

    def test_unknown_scheme(self) -> None:
        """
        ``make_record`` refuses a scheme it does not know.
        """
        self.assertRaises(ValueError, make_record, "alice", "pw", scheme="md5")

    def test_salts(self) -> None:
        """
        Salts are random.
        """
        self.assertEqual(len({new_salt() for _ in range(100)}), 100)


class ScryptTests(SynchronousTestCase):
    """
    Records with ``"scheme": "scrypt"``.
    """

    def test_round_trip(self) -> None:
        """
        An scrypt record stores its scheme and parameters, survives the
        stored format, and checks the password.
        """
        record = make_record("alice", "pw", "editor", scheme="scrypt", params=FAST)
        self.assertEqual(record.scheme, "scrypt")
        self.assertEqual(dict(record.params), FAST)
        document = json.loads(record.to_json())
        self.assertEqual(document["scheme"], "scrypt")
        self.assertEqual(document["params"], FAST)
        again = AccountRecord.from_json(record.to_json(), "alice")
        self.assertEqual(again, record)
        self.assertTrue(check_password(again, "pw"))
        self.assertFalse(check_password(again, "pW"))

    def test_defaults(self) -> None:
        """
        Without parameters the defaults (``n`` 2**14, ``r`` 8, ``p`` 1) are
        used and written into the record.
        """
        record = make_record("alice", "pw", scheme="scrypt")
        self.assertEqual(dict(record.params), SCRYPT_DEFAULTS)
        self.assertTrue(check_password(record, "pw"))

    def test_hash_is_scrypt(self) -> None:
        """
        The hash is standard base64 of stdlib scrypt over the UTF-8
        password and salt.
        """
        if not hasattr(hashlib, "scrypt"):
            raise SkipTest("no hashlib.scrypt here (PyPy)")
        expected = hashlib.scrypt(b"pw", salt=b"salt", n=2**8, r=8, p=1, dklen=32)
        self.assertEqual(
            scrypt_hash("salt", "pw", FAST), base64.b64encode(expected).decode()
        )

    def test_without_hashlib_scrypt(self) -> None:
        """
        Where ``hashlib`` has no scrypt (PyPy), OpenSSL's through cffi
        derives what ``cryptography``'s scrypt derives, with the
        parameters of a record and with the defaults.
        """
        if passwords._libcrypto_scrypt() is None:
            raise SkipTest("no cffi or libcrypto here")
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        for n, r, p, dklen in ((2**8, 8, 1, 32), (2**10, 4, 2, 64)):
            self.assertEqual(
                passwords._scrypt_without_hashlib(
                    b"p\xc3\xa9", b"salt", n, r, p, dklen
                ),
                Scrypt(b"salt", dklen, n, r, p).derive(b"p\xc3\xa9"),
            )

    def test_without_hashlib_vector(self) -> None:
        """
        Both ways of deriving without ``hashlib`` (OpenSSL's through cffi
        where it loads; ``cryptography``'s otherwise) give RFC 7914's
        test vector.
        """
        self.assertEqual(
            passwords._scrypt_without_hashlib(b"password", b"NaCl", 1024, 8, 16, 64),
            RFC7914,
        )
        self.patch(passwords, "_libcrypto_scrypt", lambda: None)
        self.assertEqual(
            passwords._scrypt_without_hashlib(b"password", b"NaCl", 1024, 8, 16, 64),
            RFC7914,
        )

    def test_missing_parameters_default(self) -> None:
        """
        A record naming only some parameters gets the defaults for the
        rest.
        """
        record = AccountRecord(
            "alice",
            "salt",
            scrypt_hash("salt", "pw", {"n": 2**8}),
            scheme="scrypt",
            params={"n": 2**8},
        )
        self.assertTrue(check_password(record, "pw"))

    def test_bad_parameters(self) -> None:
        """
        Parameters that are not whole numbers, not a power of two, or would
        cost unbounded memory or CPU raise :class:`BadParameters`.
        """
        for params in (
            {"n": "many"},
            {"n": None},
            {"n": 1000},
            {"n": 1},
            {"n": 2**21},
            {"r": 0},
            {"r": 33},
            {"p": 0},
            {"p": 17},
            {"dklen": 8},
            {"dklen": 65},
            {"n": 2**20, "r": 8},
            {"n": 2**17, "r": 32},
        ):
            record = AccountRecord("alice", "salt", "x", scheme="scrypt", params=params)
            self.assertRaises(BadParameters, check_password, record, "pw")

    def test_cost(self) -> None:
        """
        The cost of parameters is ``n * r * p``.
        """
        self.assertEqual(scrypt_cost(FAST), 2**8 * 8)
        self.assertEqual(scrypt_cost({}), 2**14 * 8)
        self.assertRaises(BadParameters, scrypt_cost, {"n": 3})


class DecoyTests(SynchronousTestCase):
    """
    Unknown usernames spend the work a known one would.
    """

    def test_unknown_user(self) -> None:
        """
        ``check_login`` with no record is always ``False``.
        """
        decoys = Decoys()
        for password in ("", "pw", "x" * 1000):
            self.assertFalse(check_login(None, password, decoys))

    def test_known_user(self) -> None:
        """
        ``check_login`` with a record checks the password.
        """
        record = make_record("alice", "pw")
        self.assertTrue(check_login(record, "pw", Decoys()))
        self.assertFalse(check_login(record, "nope", Decoys()))

    def test_starts_as_original_format(self) -> None:
        """
        Before any scrypt record is seen, the decoy is a SHA-256 record,
        like the original records: in the default deployment an unknown
        user costs exactly a known one.
        """
        decoys = Decoys()
        self.assertIs(decoys.record, DECOY_RECORD)
        self.assertEqual(DECOY_RECORD.scheme, "sha256")
        self.assertEqual(len(DECOY_RECORD.salt), len(new_salt()))
        check_login(make_record("alice", "pw"), "pw", decoys)
        self.assertIs(decoys.record, DECOY_RECORD)

    def test_follows_scrypt(self) -> None:
        """
        Once a real scrypt record has been checked (right or wrong
        password), the decoy is an scrypt record with the same parameters.
        """
        decoys = Decoys()
        record = make_record("alice", "pw", scheme="scrypt", params=FAST)
        check_login(record, "wrong", decoys)
        self.assertEqual(decoys.record.scheme, "scrypt")
        self.assertEqual(dict(decoys.record.params), FAST)
        self.assertNotEqual(decoys.record.salt, record.salt)
        self.assertFalse(check_login(None, "pw", decoys))

    def test_cheaper_record_padded(self) -> None:
        """
        Once the decoy is an scrypt record, a SHA-256 record's check is
        followed by the decoy's, so that it costs what an unknown name
        costs; a record as strong as the decoy, and every check while the
        decoy is SHA-256, is checked once.
        """
        checked: list[str] = []

        def counting(record: AccountRecord, password: str) -> bool:
            checked.append(record.scheme)
            return check_password(record, password)

        self.patch(passwords, "check_password", counting)
        decoys = Decoys()
        cheap = make_record("alice", "pw")
        strong = make_record("bob", "pw", scheme="scrypt", params=FAST)
        self.assertTrue(check_login(cheap, "pw", decoys))
        self.assertEqual(checked, ["sha256"])
        del checked[:]
        self.assertFalse(check_login(strong, "wrong", decoys))
        self.assertEqual(checked, ["scrypt"])
        for record, password, expected in ((cheap, "pw", True), (cheap, "x", False)):
            del checked[:]
            self.assertIs(check_login(record, password, decoys), expected)
            self.assertEqual(checked, ["sha256", "scrypt"])
        del checked[:]
        self.assertFalse(check_login(None, "pw", decoys))
        self.assertEqual(checked, ["scrypt"])

    def test_keeps_strongest(self) -> None:
        """
        The decoy follows the most expensive parameters seen, never going
        back to cheaper ones.
        """
        decoys = Decoys()
        strong = {"n": 2**10, "r": 8, "p": 1, "dklen": 32}
        check_login(
            make_record("bob-", "pw", scheme="scrypt", params=FAST), "pw", decoys
        )
        check_login(
            make_record("carol", "pw", scheme="scrypt", params=strong), "pw", decoys
        )
        chosen = decoys.record
        check_login(
            make_record("dave", "pw", scheme="scrypt", params=FAST), "pw", decoys
        )
        check_login(make_record("erin", "pw"), "pw", decoys)
        self.assertIs(decoys.record, chosen)
        self.assertEqual(dict(chosen.params), strong)

    def test_bad_record_not_learned(self) -> None:
        """
        A record with unusable parameters raises and teaches nothing.
        """
        decoys = Decoys()
        record = AccountRecord("alice", "s", "x", scheme="scrypt", params={"n": 3})
        self.assertRaises(BadParameters, check_login, record, "pw", decoys)
        self.assertIs(decoys.record, DECOY_RECORD)


class PasswordChecksTests(SynchronousTestCase):
    """
    :class:`PasswordChecks` checks scrypt passwords off the reactor thread
    while started, SHA-256 ones (and everything while stopped) inline.
    """

    def setUp(self) -> None:
        self.checks = PasswordChecks(ImmediateReactor())
        self.pool = FakeThreadPool()
        self.checks.pool = self.pool  # type: ignore[assignment]

    def test_scrypt_on_pool(self) -> None:
        """
        An scrypt record is checked on the pool: nothing is known until
        the pool has run the check.
        """
        record = make_record("alice", "pw", scheme="scrypt", params=FAST)
        right = self.checks.check(record, "pw")
        wrong = self.checks.check(record, "nope")
        self.assertNoResult(right)
        self.assertNoResult(wrong)
        self.assertEqual(len(self.pool.work), 2)
        self.pool.run()
        self.assertIs(self.successResultOf(right), True)
        self.assertIs(self.successResultOf(wrong), False)
        # The decoys learned the record's parameters on the pool's thread.
        self.assertEqual(self.checks.decoys.record.scheme, "scrypt")

    def test_unknown_user_scrypt_decoy_on_pool(self) -> None:
        """
        Once the decoy is an scrypt record, an unknown username's check
        goes to the pool too, as a known one's would.
        """
        self.checks.decoys.learn(make_record("a", "pw", scheme="scrypt", params=FAST))
        checked = self.checks.check(None, "pw")
        self.assertNoResult(checked)
        self.pool.run()
        self.assertIs(self.successResultOf(checked), False)

    def test_sha256_padded_on_pool(self) -> None:
        """
        A SHA-256 record padded with an scrypt decoy's work is checked on
        the pool too.
        """
        self.checks.decoys.learn(make_record("a", "pw", scheme="scrypt", params=FAST))
        checked = self.checks.check(make_record("alice", "pw"), "pw")
        self.assertNoResult(checked)
        self.pool.run()
        self.assertIs(self.successResultOf(checked), True)

    def test_sha256_inline(self) -> None:
        """
        SHA-256 records, and unknown usernames against the SHA-256 decoy,
        are checked at once, without the pool.
        """
        record = make_record("alice", "pw")
        self.assertIs(self.successResultOf(self.checks.check(record, "pw")), True)
        self.assertIs(self.successResultOf(self.checks.check(record, "x")), False)
        self.assertIs(self.successResultOf(self.checks.check(None, "pw")), False)
        self.assertEqual(self.pool.work, [])

    def test_inline_while_stopped(self) -> None:
        """
        While the pool is not started, scrypt records are checked at once.
        """
        self.pool.started = False
        record = make_record("alice", "pw", scheme="scrypt", params=FAST)
        self.assertIs(self.successResultOf(self.checks.check(record, "pw")), True)
        self.assertEqual(self.pool.work, [])

    def test_bad_parameters_fail(self) -> None:
        """
        Unusable parameters fail the Deferred with ``BadParameters``,
        on the pool and inline alike.
        """
        record = AccountRecord("a", "salt", "hash", "admin", "scrypt", {"n": 3})
        on_pool = self.checks.check(record, "pw")
        self.pool.run()
        self.failureResultOf(on_pool, BadParameters)
        self.pool.started = False
        self.failureResultOf(self.checks.check(record, "pw"), BadParameters)

    def test_start_stop(self) -> None:
        """
        ``start`` and ``stop`` start and stop a real pool of its own (with
        no thread until there is work); without a reactor it never starts.
        """
        checks = PasswordChecks(ImmediateReactor())
        self.assertFalse(checks.pool.started)
        checks.start()
        self.addCleanup(checks.stop)
        self.assertTrue(checks.pool.started)
        self.assertEqual(checks.pool.max, 2)
        checks.stop()
        self.assertFalse(checks.pool.started)
        checks.stop()
        alone = PasswordChecks()
        alone.start()
        self.assertFalse(alone.pool.started)
