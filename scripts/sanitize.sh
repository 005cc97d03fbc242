#!/usr/bin/env bash
# Runs the C++ unit tests and the concurrency-heavy Python tests against a sanitizer build:
#
#   bash scripts/sanitize.sh asan [PYTEST_ARG...]   # AddressSanitizer + UndefinedBehaviorSanitizer
#   bash scripts/sanitize.sh tsan [PYTEST_ARG...]   # ThreadSanitizer
#
# The extension and the C++ tests are built with CMake into build/<kind> (never into the
# editable .venv install). Python imports that module through build/<kind>/python (links to the
# package sources plus the sanitized _native) from a small venv, build/<kind>/venv, that sees
# .venv's packages but not its editable mooncake_hicache. The interpreter is not instrumented,
# so the sanitizer runtime is loaded with LD_PRELOAD; node processes the tests start inherit it.
# Every report, from any process, is written to build/<kind>/reports/; any report fails the run.
# Needs the .venv of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KIND=${1:-}
shift $(( $# > 0 ? 1 : 0 ))

# The concurrency-heavy Python tests: node transport, tiering, concurrency, crashes, removals
# racing puts/gets/prefetches, and clients reading NVMe pages straight from the node's data file.
PY_TESTS=(tests/test_node_transport.py tests/test_tiering.py tests/test_concurrency.py tests/test_crash_recovery.py
  tests/test_remove_races.py tests/test_direct_reads.py)
PY_SKIP=()
B=build/$KIND
REPORTS=$ROOT/$B/reports
case $KIND in
  asan)
    FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
    RUNTIME=libasan.so
    # detect_leaks: on for the C++ tests; off under Python (the interpreter keeps its objects
    # alive at exit, which LeakSanitizer would report).
    export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:log_path=$REPORTS/asan"
    PY_ASAN_OPTIONS="halt_on_error=1:detect_leaks=0:log_path=$REPORTS/asan"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan"
    ;;
  tsan)
    FLAGS="-fsanitize=thread"
    RUNTIME=libtsan.so
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$REPORTS/tsan:suppressions=$ROOT/scripts/tsan-python.supp"
    # os.fork() without exec is outside what TSan supports: the child inherits TSan's record of
    # the parent's threads that finished but were not yet joined (e.g. the pre-fault thread of a
    # closed store that an earlier test's traceback still keeps alive) and, since it can never
    # join them, reports them as leaked when it exits. The ASan run covers this test.
    PY_SKIP=(--deselect tests/test_node_transport.py::test_forked_child_opens_its_own_connections)
    ;;
  *)
    echo "usage: scripts/sanitize.sh asan|tsan [PYTEST_ARG...]" >&2
    exit 2
    ;;
esac

show_reports() {  # prints every report and fails if there is one
  if compgen -G "$REPORTS/*" >/dev/null; then
    echo "sanitize $KIND: reports in $REPORTS:" >&2
    cat "$REPORTS"/* >&2
    return 1
  fi
}

rm -rf "$REPORTS"
mkdir -p "$REPORTS"
echo "sanitize $KIND: C++ tests and module in $B"
# -O1: what the sanitizers recommend (exact stack traces), and half the compile time of -O2 for
# the pybind11 binding files.
MCH_CPP_TARGET=all bash scripts/cpp_tests.sh "$B" "-DCMAKE_CXX_FLAGS=$FLAGS -fno-omit-frame-pointer" -DMCH_OPTIMIZE=-O1 || {
  show_reports
  exit 1
}
show_reports

# The package as Python sees it in this run: the sources, plus the sanitized module.
PKG=$B/python/mooncake_hicache
rm -rf "$B/python"
mkdir -p "$PKG"
for f in mooncake_hicache/*; do
  case $f in *.so | */__pycache__) continue ;; esac
  ln -s "$ROOT/$f" "$PKG/"
done
ln -s "$ROOT/$(ls "$B"/_native*.so)" "$PKG/"
VENV=$B/venv
[ -x "$VENV/bin/python" ] || .venv/bin/python -m venv --without-pip "$VENV"
site() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
site .venv/bin/python >"$(site "$VENV/bin/python")/mooncake-hicache-dev.pth"

echo "sanitize $KIND: ${PY_TESTS[*]}"
# Run from the build directory so that the source tree's mooncake_hicache (no _native there) is
# not first on sys.path.
cd "$B"
# libstdc++ is preloaded too: the runtime's C++ exception interceptors must find it at start-up
# (python itself does not link it).
PRELOAD="$(gcc -print-file-name=$RUNTIME) $(gcc -print-file-name=libstdc++.so)"
LD_PRELOAD=$PRELOAD PYTHONPATH=$ROOT/$B/python ASAN_OPTIONS=${PY_ASAN_OPTIONS:-} \
  "$ROOT/$VENV/bin/python" - "$RUNTIME" <<'EOF'
import mooncake_hicache._native as n, os, sys
assert os.path.realpath(n.__file__).startswith(os.path.realpath(os.getcwd())), n.__file__
runtime = os.path.basename(sys.argv[1]).split(".")[0]
assert runtime in open("/proc/self/maps").read(), runtime + " is not loaded"
print("sanitize: module", os.path.realpath(n.__file__), "with", runtime)
EOF
rc=0
LD_PRELOAD=$PRELOAD PYTHONPATH=$ROOT/$B/python ASAN_OPTIONS=${PY_ASAN_OPTIONS:-} \
  "$ROOT/$VENV/bin/python" -m pytest -c "$ROOT/pyproject.toml" --rootdir "$ROOT" -p no:cacheprovider -q \
  "${PY_TESTS[@]/#/$ROOT/}" "${PY_SKIP[@]}" "$@" || rc=$?
cd "$ROOT"
show_reports
exit $rc
