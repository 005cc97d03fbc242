"""Our SGLang plugin in a fresh SGLang process, loaded the way SGLang loads it.

Each test starts a new Python process (entry points are read and plugins run once per process)
that does what an SGLang scheduler process does, in its order: ``load_plugins()``, publish the
server's resolved config, then SGLang's distributed bootstrap check for Mooncake's TransferEngine
(``bootstrap.maybe_init_shared_mooncake_transfer_engine``, the function
``init_parallel_runtime`` calls), SGLang's host-allocator choice (``get_allocator_type``),
SGLang's logging set-up (``configure_logger``) and the storage backend creation
(``StorageBackendFactory.create_backend``). The ``mooncake`` package is not installed here, so
an engine start would be an ImportError ("Please install mooncake ..."): the check is live, and
the process reports what happened.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sglang")

import sglang_helpers as h  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))

SCHEDULER_LIKE = r'''
import json, sys
sys.path.insert(0, TESTS)
import sglang_helpers as h
h.import_sglang()
from sglang.srt.plugins import load_plugins

report = {}

def engine_check():
    from sglang.srt.distributed import bootstrap
    from sglang.srt.distributed.device_communicators import mooncake_transfer_engine as te
    try:
        bootstrap.maybe_init_shared_mooncake_transfer_engine(gpu_id=0)
    except ImportError as e:
        return "ImportError: " + str(e)[:60]
    return "engine started" if te.get_mooncake_transfer_engine() is not None else "no engine"

load_plugins()                                   # SGLang: first thing in run_scheduler_process
args = h.publish_server_args(MODEL, backend="mooncake", layout="page_first", extra=EXTRA)
from sglang.srt.utils.common import configure_logger
configure_logger(args, prefix=" TP0")            # SGLang: configure_scheduler_process
report["engine"] = engine_check()                # SGLang: init_parallel_runtime
from sglang.srt.mem_cache.pool_host.common import get_allocator_type
report["allocator"] = get_allocator_type()       # SGLang: build_kv_host_pool
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
entry = StorageBackendFactory._registry["mooncake"]
report["serves_mooncake"] = entry["module_path"] + "." + entry["class_name"]
if BUILD:
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
    cfg = HiCacheStorageConfig(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                               is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
                               model_name="org/m", extra_config=dict(EXTRA))
    backend = StorageBackendFactory.create_backend("mooncake", cfg, h.mha_host_pool("page_first", 4))
    report["backend"] = type(backend).__name__
    backend.close()
print("REPORT " + json.dumps(report), flush=True)
'''


def _run(tmp_path, *, disable: bool, build: bool):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SGLANG_HICACHE_MOONCAKE_REUSE_TE", "MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN", "SGLANG_PLUGINS")}
    if disable:
        env["MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN"] = "1"
    extra = {"tiers": {"nvme": {"path": str(tmp_path / "nvme.data"), "capacity": "64MiB", "region_size": "4MiB"}}}
    code = (f"TESTS = {TESTS!r}\nMODEL = {h.model_dir(tmp_path, 'mha')!r}\nEXTRA = {json.dumps(extra)}\n"
            f"BUILD = {build}\n" + SCHEDULER_LIKE)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def _finish(proc):
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT "):]), err


@pytest.mark.skipif(importlib.util.find_spec("mooncake") is not None,
                    reason="the mooncake package is installed: the control would start a real TransferEngine")
def test_a_fresh_sglang_process_with_our_plugin_starts_no_transfer_engine_and_logs_who_serves_mooncake(tmp_path):
    for name in ("ours", "off"):
        (tmp_path / name).mkdir()
    ours = _run(tmp_path / "ours", disable=False, build=True)  # both processes start at once
    theirs = _run(tmp_path / "off", disable=True, build=False)
    report, log = _finish(ours)
    assert report == {"engine": "no engine", "allocator": "default", "backend": "MooncakeHiCacheStorage",
                      "serves_mooncake": "mooncake_hicache.sglang.MooncakeHiCacheStorage"}
    # The one line that says who serves 'mooncake', in SGLang's own log format for this rank.
    assert re.search(r"^\[[-0-9: ]+ TP0\] mooncake-hicache: --hicache-storage-backend mooncake is served by "
                     r"mooncake_hicache\.sglang\.MooncakeHiCacheStorage \(mooncake-hicache ", log, re.M), log[-3000:]

    # With our plugin turned off, SGLang keeps everything it does for its own Mooncake store.
    report, _ = _finish(theirs)
    assert report["engine"].startswith("ImportError: Please install mooncake")
    assert report["allocator"] == "mooncake"
    assert report["serves_mooncake"] == "sglang.srt.mem_cache.storage.mooncake_store.mooncake_store.MooncakeStore"
