"""A test module skipped at import reports each of its tests as skipped with the reason
(``skip_reporting.py``, installed by ``conftest.py``), so the SGLang tests do not vanish when
sglang is absent; a module that imports is collected as before."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_tests_of_a_module_skipped_at_import_are_each_reported_skipped_with_the_reason(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from skip_reporting import ModuleReportingSkippedTests

        def pytest_pycollect_makemodule(module_path, parent):
            return ModuleReportingSkippedTests.from_parent(parent, path=module_path)
        """))
    (tmp_path / "test_needs_missing.py").write_text(textwrap.dedent("""
        import pytest
        pytest.importorskip("mch_no_such_module")

        def test_one():
            assert False

        @pytest.mark.parametrize("x", [1, 2])
        def test_two(x):
            assert False

        def helper():
            pass
        """))
    (tmp_path / "test_imports.py").write_text("def test_ok():\n    assert True\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed, 2 skipped" in out, out
    for name in ("test_one", "test_two"):
        assert f"test_needs_missing.py::{name} SKIPPED" in out, out
    for line in (5, 9):  # each test's own def line
        assert f"SKIPPED [1] test_needs_missing.py:{line}: could not import 'mch_no_such_module'" in out, out
