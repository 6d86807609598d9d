"""
``metagateway-admin``: manage accounts in the gateway's credential store.

::

    metagateway-admin [--accounts-dir DIR] add-user NAME [--role ROLE]
                      [--scheme sha256|scrypt] [--password-stdin]
    metagateway-admin [--accounts-dir DIR] set-password NAME [--password-stdin]
    metagateway-admin [--accounts-dir DIR] remove-user NAME
    metagateway-admin [--accounts-dir DIR] list-users
    metagateway-admin --state-url URL revoke-user NAME
    metagateway-admin check-config FILE
    metagateway-admin assertion-key new FILE

With ``--state-url`` (or ``METAGATEWAY_STATE_URL``), ``revoke-user``,
``set-password`` and ``remove-user`` refuse every token of NAME issued up
to now, in every gateway sharing that state store (:ref:`contract-shared-state`).

The store is chosen as the daemon chooses it: ``--accounts-dir`` (or
``METAGATEWAY_ACCOUNTS_DIR``), else R2 from the ``R2_*`` variables. Every
failure is one line on stderr and a non-zero exit status; no hash or salt
is ever printed.

The command line is :mod:`~metagateway.admin.cli` (:func:`main`, also run
by ``python -m metagateway.admin``); the account commands are
:mod:`~metagateway.admin.accounts`, those on files
:mod:`~metagateway.admin.files`, and how a command fails
:mod:`~metagateway.admin.errors`.
"""

from metagateway.admin.cli import main

__all__ = ["main"]
