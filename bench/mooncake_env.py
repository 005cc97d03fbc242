#!/usr/bin/env python3
"""Mooncake's store for comparison runs, in a virtualenv of its own.

Mooncake (``mooncake-transfer-engine``) is not a dependency of this project and must never be
installed into the project's ``.venv``: SGLang changes its behaviour when it can import it
(its HiCache bootstrap starts Mooncake's TransferEngine). ``bench/cluster_bench.py`` therefore
runs Mooncake's processes under another interpreter, found in this order:

1. ``--mooncake-python PATH`` (any Python whose ``import mooncake.store`` works);
2. ``bench/.mooncake-venv/bin/python`` (git-ignored), made by this script.

Usage::

    .venv/bin/python bench/mooncake_env.py install      # make bench/.mooncake-venv (CPU build)
    .venv/bin/python bench/mooncake_env.py check        # say whether and where it imports

``install`` runs ``python3 -m venv bench/.mooncake-venv`` and ``pip install
mooncake-transfer-engine-non-cuda`` (``--package mooncake-transfer-engine`` for the CUDA build)
with the system's ``python3``; nothing here imports Mooncake into this process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".mooncake-venv")
DEFAULT_PACKAGE = "mooncake-transfer-engine-non-cuda"
PACKAGES = ("mooncake-transfer-engine-non-cuda", "mooncake-transfer-engine")
PROBE = "import mooncake.store, importlib.metadata as m; print(m.version(__import__('sys').argv[1]))"


def venv_python(venv: str = VENV) -> str:
    return os.path.join(venv, "bin", "python")


def probe(python: str) -> tuple[Optional[str], str]:
    """(version, "") when ``python`` imports ``mooncake.store``, else (None, why not)."""
    if not os.path.exists(python):
        return None, f"{python} does not exist"
    for package in PACKAGES:
        try:
            r = subprocess.run([python, "-c", PROBE, package], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, PYTHONPATH=""))
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"{python}: {e}"
        if r.returncode == 0:
            return f"{package} {r.stdout.strip()}", ""
    lines = (r.stderr.strip() or r.stdout.strip()).splitlines()
    return None, f"{python} cannot import mooncake.store ({lines[-1] if lines else 'no output'})"


def find(explicit: Optional[str] = None) -> tuple[Optional[str], str, str]:
    """(python, version, "") of the first interpreter that imports Mooncake, or (None, "", why)."""
    candidates = [explicit] if explicit else [venv_python()]
    reasons = []
    for python in candidates:
        version, why = probe(python)
        if version:
            return python, version, ""
        reasons.append(why)
    hint = "" if explicit else "; make it with: .venv/bin/python bench/mooncake_env.py install"
    return None, "", "; ".join(reasons) + hint


def install(package: str = DEFAULT_PACKAGE, venv: str = VENV) -> str:
    """Make ``venv`` with the system's python3 and install ``package`` there; returns its python."""
    base = shutil.which("python3") or sys.executable
    if os.path.realpath(venv) == os.path.realpath(sys.prefix):
        raise SystemExit("refusing to install Mooncake into the interpreter running this script")
    if not os.path.exists(venv_python(venv)):
        subprocess.run([base, "-m", "venv", venv], check=True)
    subprocess.run([venv_python(venv), "-m", "pip", "install", "-q", package], check=True)
    return venv_python(venv)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("install", "check"))
    p.add_argument("--package", default=DEFAULT_PACKAGE, choices=PACKAGES)
    p.add_argument("--venv", default=VENV)
    args = p.parse_args(argv)
    if args.action == "install":
        install(args.package, args.venv)
    python, version, why = find(venv_python(args.venv) if args.venv != VENV else None)
    if python:
        print(f"mooncake: {version} under {python}")
        return 0
    print(f"mooncake: not available: {why}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
