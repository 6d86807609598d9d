#!/usr/bin/env python3
"""Prepare the PyPy environment the benchmark's PyPy rows run in (issue 19).

Debian's ``pypy3`` (PyPy 7.3.11, Python 3.9) has no Twisted of its own.
This script makes a virtual environment for it, by default
``.pypy-venv`` at the repository root (ignored by git), and installs the
checkout there (``pip install -e .``, in setuptools' ``compat`` editable
mode so that ``.pypy-venv/bin/twistd`` finds the ``metagateway`` plugin)
with its runtime dependencies, so ``bench/run.py`` can start the bare
proxy and ``twistd -n metagateway`` under PyPy. ``bench/run.py`` calls it by itself when a PyPy row is asked
for; run it alone to prepare (or repair) the environment::

    python bench/pypyenv.py                  # runtime dependencies
    python bench/pypyenv.py --extras test    # and the test extra, for trial
    python bench/pypyenv.py --no-install     # never apt-get

What PyPy 3.9 needs that ``pip install -e .`` does not do by itself:

- ``cryptography``: releases from 44 on publish no PyPy 3.9 wheels, and
  building one needs a Rust toolchain and crates from the network. Pinned
  below 44 and taken as a wheel only (43.0.3 has ``pp39`` wheels).
- ``pydantic-core`` (the test extra, through moto): the same story; wheel
  only, which keeps ``pydantic`` below 2.12.
- ``regex`` and ``PyYAML`` (test extra) compile against PyPy's headers:
  Debian's ``pypy3-dev``.

Twisted resolves to 25.5, the last release for Python 3.9. A stamp file
in the environment records what was installed (the interpreter, the
extras and ``setup.py``'s hash); a second call with the same inputs only
checks that the gateway imports.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Where the environment goes by default (``.gitignore`` lists it).
DEFAULT_VENV = ROOT / ".pypy-venv"

#: Debian's packages: the interpreter, its ``venv``/``ensurepip``, and its
#: headers (C extensions of the test extra).
APT_PACKAGES = ("pypy3", "pypy3-venv", "pypy3-dev")

#: Requirements that keep pip on releases with PyPy 3.9 wheels.
PINS = ("cryptography<44",)
TEST_PINS = ("pydantic<2.12",)

#: Never built from source here: their sources need Rust (see above).
ONLY_BINARY = "cryptography,cffi,pydantic-core,rpds-py"

#: What the benchmark needs to import under the environment's interpreter.
CHECK = "import twisted, treq, klein, jwt, metagateway.daemon.tap"

STAMP = "metagateway-bench.stamp"

#: Bumped when the way this script installs changes (the stamp holds it).
LAYOUT = "2"


class NotPrepared(Exception):
    """The environment could not be made; the message says why."""


def find_pypy(name: str = "pypy3", install: bool = True) -> str | None:
    """``name`` on PATH, installing Debian's PyPy first when it is missing,
    ``install`` allows it, we are root and ``apt-get`` exists."""
    found = shutil.which(name)
    if found or not install or name != "pypy3":
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    print(f"installing {' '.join(APT_PACKAGES)} with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *APT_PACKAGES], env=env, check=False
    )
    return shutil.which(name)


def _stamp(pypy: str, extras: str) -> str:
    """What the environment was made from: a change means reinstall."""
    version = subprocess.run(
        [pypy, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    setup = hashlib.sha256((ROOT / "setup.py").read_bytes()).hexdigest()
    return f"{LAYOUT}\n{os.path.realpath(pypy)}\n{version}\n{extras}\n{setup}\n"


def _imports(python: Path) -> str | None:
    """None if ``python`` imports what the benchmark needs, else why not."""
    out = subprocess.run(
        [str(python), "-c", CHECK],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if out.returncode == 0:
        return None
    lines = out.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {out.returncode}"


def prepare(
    pypy: str, venv: Path = DEFAULT_VENV, extras: str = "", quiet: bool = True
) -> Path:
    """Make (or reuse) ``venv`` for ``pypy`` with the checkout installed.

    :param extras: comma list of ``setup.py`` extras (``test``) to add.
    :returns: the environment's interpreter.
    :raises NotPrepared: a step failed; its message holds the last line.
    """
    python = venv / "bin" / "pypy3"
    stamp = _stamp(pypy, extras)
    stamp_file = venv / STAMP
    if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        if _imports(python) is None:
            return python
    print(f"preparing the PyPy environment {venv} (about a minute) ...", flush=True)
    if not python.exists():
        made = subprocess.run(
            [pypy, "-m", "venv", str(venv)], capture_output=True, text=True
        )
        if made.returncode != 0:
            last = (made.stderr.strip().splitlines() or ["?"])[-1]
            raise NotPrepared(
                f"{pypy} -m venv failed ({last}); Debian needs pypy3-venv"
            )
    target = str(ROOT) + (f"[{extras}]" if extras else "")
    pins = list(PINS) + (list(TEST_PINS) if "test" in extras.split(",") else [])
    argv = [str(python), "-m", "pip", "install"]
    argv += ["--quiet"] if quiet else []
    # The compat editable mode puts the checkout on sys.path, so the
    # environment's own twistd finds the metagateway plugin too.
    argv += ["--only-binary", ONLY_BINARY, *pins, "-e", target]
    argv += ["--config-settings", "editable_mode=compat"]
    done = subprocess.run(argv, capture_output=quiet, text=True, cwd=ROOT)
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines() if quiet else []
        raise NotPrepared(
            "pip install into the PyPy environment failed"
            + (f" ({lines[-1]})" if lines else "")
            + f"; retry with: {sys.executable} bench/pypyenv.py --verbose"
        )
    why = _imports(python)
    if why:
        raise NotPrepared(f"the PyPy environment cannot import the gateway ({why})")
    stamp_file.write_text(stamp)
    return python


def main(argv: list[str] | None = None) -> int:
    """Prepare the environment and print its interpreter's path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument(
        "--pypy", default="pypy3", help="the PyPy to base it on (default pypy3)"
    )
    parser.add_argument(
        "--venv",
        default=str(DEFAULT_VENV),
        help=f"where (default {DEFAULT_VENV.relative_to(ROOT)} in the checkout)",
    )
    parser.add_argument(
        "--extras", default="", help="setup.py extras to add, e.g. test"
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get")
    parser.add_argument("--verbose", action="store_true", help="show pip's output")
    args = parser.parse_args(argv)
    pypy = find_pypy(args.pypy, install=not args.no_install)
    if pypy is None:
        print(
            f"pypyenv: no {args.pypy}. On Debian: "
            f"sudo apt-get install -y {' '.join(APT_PACKAGES)}",
            file=sys.stderr,
        )
        return 1
    try:
        python = prepare(pypy, Path(args.venv), args.extras, quiet=not args.verbose)
    except NotPrepared as e:
        print(f"pypyenv: {e}", file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
