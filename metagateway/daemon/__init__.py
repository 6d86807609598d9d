"""
The daemon: the ``twistd`` plugin's options and service, the worker
supervisor, and ``--dev``.
"""
