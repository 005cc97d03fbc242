#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: the C++ unit tests (tests/cpp, via
# scripts/cpp_tests.sh), then the Python tests. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/cpp_tests.sh
exec .venv/bin/python -m pytest tests -q "$@"
