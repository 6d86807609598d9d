"""
The ``metagateway-admin`` commands on files rather than on the credential
store: ``assertion-key new FILE`` and ``check-config FILE``.
"""

from __future__ import annotations

import os
from typing import Mapping, TextIO

from metagateway.admin.errors import AdminError
from metagateway.auth.assertion import key_id, new_key_pem, parse_key
from metagateway.configfile import ConfigFileError, load_config_file


def new_assertion_key(path: str, stdout: TextIO) -> None:
    """
    ``assertion-key new FILE``: write a new EC P-256 private key (PEM,
    mode 0600) to ``path``, which must not exist, and print its ``kid``.

    :raises AdminError: when the file exists or cannot be written.
    """
    pem = new_key_pem()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AdminError("%s exists already: not overwritten" % (path,)) from None
    except OSError as e:
        raise AdminError("%s cannot be written: %s" % (path, e.strerror)) from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    stdout.write(
        "wrote a new assertion key to %s (kid %s); point "
        "GATEWAY_ASSERTION_KEY_FILE at it and reload the gateway\n"
        % (path, key_id(parse_key(pem, path).public_key()))
    )
    stdout.flush()


def check_config(path: str, environ: Mapping[str, str], stdout: TextIO) -> None:
    """
    ``check-config FILE``: one line on ``stdout`` when the file is valid.

    :raises AdminError: with the message a refused start would give.
    """
    try:
        loaded = load_config_file(path, environ)
    except ConfigFileError as e:
        raise AdminError(str(e)) from None
    stdout.write(
        "%s: valid: %d route(s) (%s), CORS origins %s\n"
        % (
            path,
            len(loaded.routes),
            ", ".join(
                "/%s %s" % (route.prefix.decode("ascii"), route.name)
                for route in loaded.routes
            ),
            ", ".join(loaded.allow_origins),
        )
    )
    stdout.flush()
