"""The extension compiles without liburing and then runs on its pread/pwrite thread pool; and
without libibverbs, where cluster.transport rdma is a clear error naming libibverbs-dev.

This builds csrc/ a second time with -DMCH_DISABLE_URING=ON -DMCH_DISABLE_RDMA=ON (what a machine
without liburing-dev and libibverbs-dev gets) into a temporary directory, and runs a round trip
with that build in a child process. It takes about a minute on two cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pybind11
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("cmake") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "cmake")),
                    reason="cmake is not installed")
def test_build_without_liburing_falls_back_to_the_thread_pool(tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    cmake = os.path.join(bin_dir, "cmake") if os.path.exists(os.path.join(bin_dir, "cmake")) else "cmake"
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    build = tmp_path / "build"
    subprocess.run([cmake, "-S", ROOT, "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DMCH_DISABLE_URING=ON", "-DMCH_DISABLE_RDMA=ON", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                    f"-DPython_EXECUTABLE={sys.executable}"], check=True, env=env, capture_output=True)
    subprocess.run([cmake, "--build", str(build)], check=True, env=env, capture_output=True)
    pkg = tmp_path / "pkg"
    shutil.copytree(os.path.join(ROOT, "mooncake_hicache"), pkg / "mooncake_hicache",
                    ignore=shutil.ignore_patterns("_native*.so", "__pycache__"))
    for f in build.iterdir():
        if f.name.startswith("_native") and f.suffix == ".so":
            shutil.copy(f, pkg / "mooncake_hicache")
    script = textwrap.dedent(f"""
        import logging, sys
        # Load this build, not the editable install of the checkout.
        sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower() and "Scikit" not in type(f).__name__]
        sys.path.insert(0, {str(pkg)!r})
        logging.basicConfig(level=logging.WARNING)
        import mooncake_hicache
        from mooncake_hicache import _native, Store
        assert mooncake_hicache.__file__.startswith({str(pkg)!r}), mooncake_hicache.__file__
        assert _native.HAVE_URING is False
        cfg = {{"tiers": {{"nvme": {{"path": {str(tmp_path / "d.data")!r}, "capacity": "64MiB", "region_size": "4MiB"}}}}}}
        with Store.from_config(cfg) as s:
            assert s.put("k", b"v" * 10000) == 0
            assert s.get("k") == b"v" * 10000
            print(s.stats()["nvme"]["io_backend"])
        assert _native.RDMA_COMPILED_IN is False
        from mooncake_hicache.config import load_config
        from mooncake_hicache.cluster.transport import choose_transport
        from mooncake_hicache.errors import ConfigError
        cluster = load_config({{"tiers": {{"dram": {{"capacity": "64MiB"}}}}, "cluster": {{"node_id": "a",
            "listen_port": 7700, "members": [{{"id": "a", "host": "127.0.0.1", "port": 7700}}],
            "secret": "0123456789abcdef0123", "transport": "rdma"}}}}).cluster
        try:
            choose_transport(cluster)
        except ConfigError as e:
            assert "libibverbs-dev" in str(e) and "cluster.transport" in str(e), str(e)
        else:
            raise AssertionError("transport rdma was accepted by a build without libibverbs")
        import dataclasses
        assert not choose_transport(dataclasses.replace(cluster, transport="auto")).rdma
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "threads"
    assert "no io_uring support" in out.stderr  # the one warning line
