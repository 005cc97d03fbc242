#!/usr/bin/env bash
# Sets up everything mooncake-hicache needs on Debian/Ubuntu, idempotently:
#   system packages (compiler, liburing, xxhash, fio, etcd), a virtualenv in .venv, and an
#   editable build of the package (the C++ extension is compiled here).
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd-server: the cluster membership tests start a real etcd on free loopback ports (on a host
# with systemd, Debian also enables an etcd service on :2379: 'systemctl disable --now etcd' if
# it is not wanted). libssl-dev: HMAC-SHA256 for the cluster handshake (OpenSSL libcrypto).
# libibverbs-dev: the RDMA transport (cluster.transport rdma; without it the build has only TCP);
# python3-pyverbs: 'mooncake-hicache devices' (made importable in the virtualenv below).
APT_PACKAGES=(g++ cmake make pkg-config liburing-dev libxxhash-dev libssl-dev fio etcd-server libibverbs-dev
              python3-pyverbs)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# pyverbs comes from the system package (it matches the system's rdma-core; the PyPI 'pyverbs' is
# a source build of all of rdma-core): link just that package into the virtualenv, and drop the
# link again when this Python cannot load it (another minor version than the system's).
link_pyverbs() {
  local src site
  src=$(/usr/bin/python3 -c 'import os, pyverbs; print(os.path.dirname(pyverbs.__file__))' 2>/dev/null) || {
    echo "setup: pyverbs not found (python3-pyverbs); 'mooncake-hicache devices' will say how to install it"
    return 0
  }
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
  ln -sfn "$src" "$site/pyverbs"
  if ! .venv/bin/python -c 'import pyverbs.device' 2>/dev/null; then
    rm -f "$site/pyverbs"
    echo "setup: the system's pyverbs does not load in $(.venv/bin/python --version); 'mooncake-hicache devices' needs it"
  fi
}

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja pyyaml "prometheus-client>=0.17" "waitress>=3.0" pytest numpy matplotlib tqdm \
  "etcd3gw>=2.4"
# SGLang integration and its tests: CPU torch, the sglang wheel without its (GPU) dependencies,
# and the few pure-Python packages its mem_cache modules import.
if [ -f requirements-sglang.txt ] && [ "${MOONCAKE_HICACHE_SKIP_SGLANG:-0}" != "1" ]; then
  echo "setup: installing SGLang (CPU) for the integration"
  .venv/bin/python -m pip install -q -r requirements-sglang.txt
  .venv/bin/python -m pip install -q --no-deps "sglang==0.5.23"
fi
link_pyverbs
echo "setup: building mooncake-hicache (C++ extension)"
.venv/bin/python -m pip install -q --no-build-isolation -e .
.venv/bin/python -c "import mooncake_hicache._native as n; print('setup: ok (io_uring compiled in: %s)' % n.HAVE_URING)"
