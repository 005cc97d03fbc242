#!/usr/bin/env bash
# Builds the C++ unit tests (tests/cpp, GoogleTest) with CMake and runs them with ctest.
#
#   bash scripts/cpp_tests.sh [BUILD_DIR [CMAKE_ARG...]]
#
# BUILD_DIR defaults to build/cpp. Extra arguments go to the CMake configure step (the sanitizer
# builds of scripts/sanitize.sh pass their compiler flags here). MCH_CPP_TARGET names what to
# build (default mch_unit_tests; "all" also builds the extension module into BUILD_DIR).
# Needs the .venv of scripts/setup.sh (cmake, ninja, pybind11). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build/cpp}
shift $(( $# > 0 ? 1 : 0 ))
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$BUILD_DIR"

echo "cpp tests: configuring $BUILD_DIR"
# RelWithDebInfo: no LTO (pybind11 adds it to Release builds), -O2 from the project; -g1 gives
# the line tables that sanitizer and crash reports need at a fraction of -g's compile time.
if ! cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-g1 -DNDEBUG" \
    -DMCH_BUILD_TESTS=ON -DPython_EXECUTABLE="$PWD/.venv/bin/python" -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" "$@" \
    >"$BUILD_DIR/configure.log" 2>&1; then
  cat "$BUILD_DIR/configure.log"
  exit 1
fi
echo "cpp tests: building ${MCH_CPP_TARGET:-mch_unit_tests}"
cmake --build "$BUILD_DIR" --target "${MCH_CPP_TARGET:-mch_unit_tests}" -- -j"$(nproc)"
echo "cpp tests: running (log: $BUILD_DIR/ctest.log)"
if ! ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$(nproc)" >"$BUILD_DIR/ctest.log" 2>&1; then
  grep -v " Passed " "$BUILD_DIR/ctest.log"  # the failing cases with their output, and the summary
  exit 1
fi
tail -n 3 "$BUILD_DIR/ctest.log"
