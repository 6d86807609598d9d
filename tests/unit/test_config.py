"""
Tests for :mod:`metagateway.config`: options, environment, and refusals.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from metagateway.config import ConfigurationError, GatewayConfig

BASE_ENV = {"GATEWAY_JWT_SECRET": "s" * 40, "METAGATEWAY_ACCOUNTS_DIR": "/accounts"}


class FromOptionsTests(SynchronousTestCase):
    """
    :meth:`GatewayConfig.from_options`.
    """

    def test_defaults(self) -> None:
        """
        With only a secret and a store, the contract's defaults apply.
        """
        config = GatewayConfig.from_options({}, BASE_ENV)
        self.assertEqual(config.listen, ("tcp:8080",))
        self.assertEqual(config.upstream_timeout, 30.0)
        self.assertEqual(config.clock_skew, 0.0)
        self.assertEqual(config.login_failures_per_user, 5)
        self.assertEqual(config.login_failures_per_address, 20)
        self.assertEqual(config.login_window, 60.0)
        self.assertEqual(config.accounts_dir, "/accounts")
        self.assertIsNone(config.r2)
        self.assertEqual(dict(config.services), {})

    def test_environment_read(self) -> None:
        """
        Every option reads its environment variable.
        """
        env = dict(
            BASE_ENV,
            METAGATEWAY_LISTEN="tcp:1:interface=127.0.0.1,unix:/tmp/s",
            METAGATEWAY_UPSTREAM_TIMEOUT="2.5",
            METAGATEWAY_CLOCK_SKEW="7",
            METAGATEWAY_LOGIN_FAILURES_PER_USER="0",
            METAGATEWAY_LOGIN_FAILURES_PER_ADDRESS="3",
            METAGATEWAY_LOGIN_WINDOW="10",
            GATEWAY_JWT_PREVIOUS_SECRETS="old1, old2,,",
            BUILD_SERVICE_URL="http://b.test/x/",
            KV_SERVICE_URL="https://kv.test",
        )
        config = GatewayConfig.from_options({}, env)
        self.assertEqual(config.listen, ("tcp:1:interface=127.0.0.1", "unix:/tmp/s"))
        self.assertEqual(config.upstream_timeout, 2.5)
        self.assertEqual(config.clock_skew, 7.0)
        self.assertEqual(config.login_failures_per_user, 0)
        self.assertEqual(config.login_failures_per_address, 3)
        self.assertEqual(config.login_window, 10.0)
        self.assertEqual(config.previous_secrets, ("old1", "old2"))
        self.assertEqual(
            dict(config.services),
            {"BUILD": "http://b.test/x/", "KV": "https://kv.test"},
        )

    def test_option_wins(self) -> None:
        """
        A command-line option wins over its environment variable.
        """
        env = dict(
            BASE_ENV, METAGATEWAY_UPSTREAM_TIMEOUT="2", METAGATEWAY_LISTEN="tcp:1"
        )
        config = GatewayConfig.from_options(
            {
                "upstream-timeout": "9",
                "listen": ["tcp:2", "tcp:3"],
                "accounts-dir": "/other",
            },
            env,
        )
        self.assertEqual(config.upstream_timeout, 9.0)
        self.assertEqual(config.listen, ("tcp:2", "tcp:3"))
        self.assertEqual(config.accounts_dir, "/other")

    def test_missing_secret(self) -> None:
        """
        No ``GATEWAY_JWT_SECRET`` is refused, naming it.
        """
        e = self.assertRaises(
            ConfigurationError,
            GatewayConfig.from_options,
            {},
            {"METAGATEWAY_ACCOUNTS_DIR": "/a"},
        )
        self.assertIn("GATEWAY_JWT_SECRET", str(e))

    def test_missing_store(self) -> None:
        """
        Neither an accounts directory nor R2 is refused, naming both.
        """
        e = self.assertRaises(
            ConfigurationError,
            GatewayConfig.from_options,
            {},
            {"GATEWAY_JWT_SECRET": "x"},
        )
        self.assertIn("--accounts-dir", str(e))
        self.assertIn("R2_ENDPOINT_URL", str(e))

    def test_missing_secret_and_store(self) -> None:
        """
        With neither the secret nor a store, the one line names both.
        """
        e = self.assertRaises(ConfigurationError, GatewayConfig.from_options, {}, {})
        self.assertEqual(
            str(e),
            "GATEWAY_JWT_SECRET is not set; no credential store: give "
            "--accounts-dir (or METAGATEWAY_ACCOUNTS_DIR) or set R2_ENDPOINT_URL",
        )
        self.assertNotIn(
            "no credential store",
            str(
                self.assertRaises(
                    ConfigurationError,
                    GatewayConfig.from_options,
                    {},
                    {"R2_ENDPOINT_URL": "https://r2.test"},
                )
            ),
        )

    def test_r2_selected_and_incomplete(self) -> None:
        """
        R2 is used when ``R2_ENDPOINT_URL`` is set and no directory is given;
        incomplete R2 settings are refused naming the variable; the
        directory wins over R2.
        """
        env = {
            "GATEWAY_JWT_SECRET": "x",
            "R2_ENDPOINT_URL": "http://127.0.0.1:9000",
            "R2_ACCESS_KEY_ID": "id",
            "R2_SECRET_ACCESS_KEY": "key",
        }
        config = GatewayConfig.from_options({}, env)
        assert config.r2 is not None
        self.assertEqual(config.r2.bucket, "metacogna-accounts")
        self.assertEqual(config.r2.region, "auto")
        self.assertNotIn("key", repr(config.r2).replace("access_key_id", ""))
        incomplete = dict(env)
        del incomplete["R2_SECRET_ACCESS_KEY"]
        e = self.assertRaises(
            ConfigurationError, GatewayConfig.from_options, {}, incomplete
        )
        self.assertIn("R2_SECRET_ACCESS_KEY", str(e))
        del incomplete["R2_ACCESS_KEY_ID"]
        e = self.assertRaises(
            ConfigurationError, GatewayConfig.from_options, {}, incomplete
        )
        self.assertEqual(
            str(e),
            "R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY are not set (needed for "
            "the R2 credential store)",
        )
        config = GatewayConfig.from_options({"accounts-dir": "/d"}, env)
        self.assertIsNone(config.r2)
        self.assertEqual(config.accounts_dir, "/d")

    def test_bad_values(self) -> None:
        """
        Malformed numbers and service URLs are refused with one line.
        """
        for env in (
            dict(BASE_ENV, METAGATEWAY_UPSTREAM_TIMEOUT="soon"),
            dict(BASE_ENV, METAGATEWAY_LOGIN_WINDOW="-1"),
            dict(BASE_ENV, METAGATEWAY_LOGIN_FAILURES_PER_USER="2.5"),
            dict(BASE_ENV, METAGATEWAY_CLOCK_SKEW="nan"),
            dict(BASE_ENV, KV_SERVICE_URL="ftp://kv"),
            dict(BASE_ENV, METAGATEWAY_TRUSTED_PROXIES="10.0.0.1, lb.internal"),
            dict(BASE_ENV, METAGATEWAY_TRUSTED_PROXIES="10.0.0.0/33"),
        ):
            e = self.assertRaises(
                ConfigurationError, GatewayConfig.from_options, {}, env
            )
            self.assertNotIn("\n", str(e))

    def test_trusted_proxies(self) -> None:
        """
        Trusted proxies are a comma list of addresses and CIDR networks,
        kept as written (less spaces).
        """
        config = GatewayConfig.from_options(
            {"trusted-proxies": " 10.0.0.7, 10.1.0.0/16 ,fd00::/8,"}, BASE_ENV
        )
        self.assertEqual(
            config.trusted_proxies, ("10.0.0.7", "10.1.0.0/16", "fd00::/8")
        )


class WebSocketIdleTimeoutTests(SynchronousTestCase):
    """
    ``--websocket-idle-timeout`` (:ref:`contract-websocket`).
    """

    def test_default(self) -> None:
        """
        Unset, it is 300 seconds.
        """
        config = GatewayConfig.from_options({}, BASE_ENV)
        self.assertEqual(config.websocket_idle_timeout, 300.0)

    def test_option_and_variable(self) -> None:
        """
        The variable is read; the option wins over it; a bad value is
        refused naming the option.
        """
        env = {**BASE_ENV, "METAGATEWAY_WEBSOCKET_IDLE_TIMEOUT": "45"}
        config = GatewayConfig.from_options({}, env)
        self.assertEqual(config.websocket_idle_timeout, 45.0)
        config = GatewayConfig.from_options({"websocket-idle-timeout": "0"}, env)
        self.assertEqual(config.websocket_idle_timeout, 0.0)
        e = self.assertRaises(
            ConfigurationError,
            GatewayConfig.from_options,
            {"websocket-idle-timeout": "-1"},
            BASE_ENV,
        )
        self.assertIn("websocket-idle-timeout", str(e))


class StoreSettingsTests(SynchronousTestCase):
    """
    ``--store-timeout`` and ``--store-retries``.
    """

    def test_defaults(self) -> None:
        """
        Unset, they are 5 seconds and 2 retries.
        """
        config = GatewayConfig.from_options({}, BASE_ENV)
        self.assertEqual((config.store_timeout, config.store_retries), (5.0, 2))

    def test_option_and_variable(self) -> None:
        """
        The variable is read; the option wins over it.
        """
        env = {
            **BASE_ENV,
            "METAGATEWAY_STORE_TIMEOUT": "1.5",
            "METAGATEWAY_STORE_RETRIES": "4",
        }
        config = GatewayConfig.from_options({}, env)
        self.assertEqual((config.store_timeout, config.store_retries), (1.5, 4))
        config = GatewayConfig.from_options(
            {"store-timeout": "9", "store-retries": "0"}, env
        )
        self.assertEqual((config.store_timeout, config.store_retries), (9.0, 0))

    def test_bad_values(self) -> None:
        """
        A malformed, negative, zero (timeout) or fractional (retries) value
        is refused, naming the option and the variable.
        """
        for options, needle in (
            ({"store-timeout": "soon"}, "must be a number"),
            ({"store-timeout": "-1"}, "non-negative"),
            ({"store-timeout": "0"}, "more than 0"),
            ({"store-timeout": "inf"}, "non-negative"),
            ({"store-retries": "2.5"}, "whole number"),
            ({"store-retries": "-2"}, "non-negative"),
        ):
            e = self.assertRaises(
                ConfigurationError, GatewayConfig.from_options, options, BASE_ENV
            )
            name = next(iter(options))
            self.assertIn(
                "--%s / METAGATEWAY_%s" % (name, name.upper().replace("-", "_")), str(e)
            )
            self.assertIn(needle, str(e))
