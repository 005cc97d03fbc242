"""Our SGLang plugin in a fresh SGLang process, loaded the way SGLang loads it.

The test starts a new Python process (entry points are read and plugins run once per process)
that publishes a server's resolved config for ``--hicache-storage-backend mooncake`` and reads
SGLang's own decisions for that name: its distributed bootstrap check for Mooncake's
TransferEngine (``bootstrap.maybe_init_shared_mooncake_transfer_engine``, the function
``init_parallel_runtime`` calls), its host-allocator choice (``get_allocator_type``) and the
class its ``StorageBackendFactory`` registry names. It reads them once before and once after
``load_plugins()`` (then SGLang's ``configure_logger`` and ``StorageBackendFactory.create_backend``,
as a scheduler process does). The ``mooncake`` package is not installed here, so an engine start
is an ImportError ("Please install mooncake ..."): the check is live.
"""

from __future__ import annotations

import collections
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
from sglang.srt.mem_cache.pool_host.common import get_allocator_type
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

def engine_check():
    from sglang.srt.distributed import bootstrap
    from sglang.srt.distributed.device_communicators import mooncake_transfer_engine as te
    try:
        bootstrap.maybe_init_shared_mooncake_transfer_engine(gpu_id=0)
    except ImportError as e:
        return "ImportError: " + str(e)[:60]
    return "engine started" if te.get_mooncake_transfer_engine() is not None else "no engine"

def state():
    entry = StorageBackendFactory._registry["mooncake"]
    return {"engine": engine_check(),                 # SGLang: init_parallel_runtime
            "allocator": get_allocator_type(),        # SGLang: build_kv_host_pool
            "serves_mooncake": entry["module_path"] + "." + entry["class_name"]}

args = h.publish_server_args(MODEL, backend="mooncake", layout="page_first", extra=EXTRA)
report = {"without_plugin": state()}            # SGLang as it is for its own Mooncake store
load_plugins()                                   # SGLang: first thing in run_scheduler_process
from sglang.srt.utils.common import configure_logger
configure_logger(args, prefix=" TP0")            # SGLang: configure_scheduler_process
report["with_plugin"] = state()
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
cfg = HiCacheStorageConfig(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                           is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
                           model_name="org/m", extra_config=dict(EXTRA))
backend = StorageBackendFactory.create_backend("mooncake", cfg, h.mha_host_pool("page_first", 4))
report["backend"] = type(backend).__name__
backend.close()
print("REPORT " + json.dumps(report), flush=True)
'''


def _run(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SGLANG_HICACHE_MOONCAKE_REUSE_TE", "MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN", "SGLANG_PLUGINS")}
    extra = {"tiers": {"nvme": {"path": str(tmp_path / "nvme.data"), "capacity": "64MiB", "region_size": "4MiB"}}}
    code = (f"TESTS = {TESTS!r}\nMODEL = {h.model_dir(tmp_path, 'mha')!r}\nEXTRA = {json.dumps(extra)}\n"
            + SCHEDULER_LIKE)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT "):]), proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("mooncake") is not None,
                    reason="the mooncake package is installed: SGLang would start a real TransferEngine")
def test_a_fresh_sglang_process_with_our_plugin_starts_no_transfer_engine_and_logs_who_serves_mooncake(tmp_path):
    report, log = _run(tmp_path)
    # Before plugins run, SGLang does for the name 'mooncake' what it does for its own store: the
    # bootstrap check is live (it would start Mooncake's engine) and the allocator is Mooncake's.
    assert report["without_plugin"]["engine"].startswith("ImportError: Please install mooncake")
    assert report["without_plugin"]["allocator"] == "mooncake"
    assert report["without_plugin"]["serves_mooncake"] == \
        "sglang.srt.mem_cache.storage.mooncake_store.mooncake_store.MooncakeStore"
    assert report["with_plugin"] == {"engine": "no engine", "allocator": "default",
                                     "serves_mooncake": "mooncake_hicache.sglang.MooncakeHiCacheStorage"}
    assert report["backend"] == "MooncakeHiCacheStorage"
    # The one line that says who serves 'mooncake', in SGLang's own log format for this rank.
    assert re.search(r"^\[[-0-9: ]+ TP0\] mooncake-hicache: --hicache-storage-backend mooncake is served by "
                     r"mooncake_hicache\.sglang\.MooncakeHiCacheStorage \(mooncake-hicache ", log, re.M), log[-3000:]


def test_with_the_plugin_turned_off_it_leaves_sglangs_mooncake_settings_alone(monkeypatch):
    from sglang.srt.plugins.hook_registry import HookRegistry

    from mooncake_hicache.sglang import hooks, plugin

    monkeypatch.setenv(plugin.DISABLE_ENV, "1")
    monkeypatch.delenv(hooks.REUSE_TE_ENV, raising=False)
    monkeypatch.setattr(hooks, "_registered", set())
    monkeypatch.setattr(HookRegistry, "_hooks", collections.defaultdict(list))
    assert plugin.register() is False
    assert hooks.REUSE_TE_ENV not in os.environ
    # Only the hook that acts on our own backend class is registered.
    assert set(HookRegistry._hooks) == {hooks.SHOULD_BACKUP_TARGET}
