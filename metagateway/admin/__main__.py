"""
``python -m metagateway.admin``: the ``metagateway-admin`` command.
"""

from metagateway.admin.cli import main

if __name__ == "__main__":
    main()
