"""Tests of a module skipped at import are reported one by one, with the reason.

A module that calls ``pytest.importorskip`` at import time (``test_sglang_backend.py`` without
``sglang`` or ``torch``) is normally reported as one skipped entry for the whole file, so its
tests vanish from the counts. :class:`ModuleReportingSkippedTests` lists the file's test
functions from its source instead (no import) and reports each as skipped with the module's
reason. ``conftest.py`` installs it through ``pytest_pycollect_makemodule``; modules that import
normally are collected exactly as before. Parametrized tests are reported once, by name.
"""

from __future__ import annotations

import ast

import pytest


def test_functions(path) -> list[tuple[str, int]]:
    """(name, 0-based line) of the module-level ``test*`` functions in the Python file ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(n.name, n.lineno - 1) for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")]


test_functions.__test__ = False  # a helper, not a test


class SkippedTest(pytest.Item):
    """A test of a module that could not be imported: skipped with the module's reason."""

    def __init__(self, *, reason: str, line: int, **kwargs):
        super().__init__(**kwargs)
        self.reason, self.line = reason, line

    def runtest(self) -> None:
        # reported at the test's own file (as a skipif mark is), not at this line
        raise pytest.skip.Exception(self.reason, _use_item_location=True)

    def reportinfo(self):
        return self.path, self.line, self.name


class ModuleReportingSkippedTests(pytest.Module):
    """A test module; when its import skips it (``allow_module_level``), its tests are listed
    from the source and each reports that skip."""

    def collect(self):
        try:
            return super().collect()
        except pytest.skip.Exception as e:
            tests = test_functions(self.path) if e.allow_module_level else []
            if not tests:
                raise
            reason = f"{e.msg} (whole module skipped at import)"
            return [SkippedTest.from_parent(self, name=name, line=line, reason=reason) for name, line in tests]
