"""SGLang's generic (non-zero-copy) storage calls: ``get``/``set``/``exists`` and their batch forms.

SGLang uses them for backends without the v1 interface (``--hicache-storage-backend dynamic``
without ``"interface_v1": 1``): a page travels as SGLang's own flat page tensor
(``host_pool.get_data_page(i, flat=True)``). They store under the KV pool's own key, so the
tensor calls and the zero-copy calls read each other's pages.

A mixin of :class:`~mooncake_hicache.sglang.backend.MooncakeHiCacheStorage`: it uses the
backend's ``store``, ``_kv_view``, ``_registered`` ranges, ``_usable()``, ``_warn`` and
``is_mla``/``is_writer``. Thread-safe and never raises, like the rest of the backend.
"""

from __future__ import annotations

import bisect
import ctypes
from typing import Any, List, Optional

import torch


class TensorCalls:
    """``get``, ``batch_get``, ``set``, ``batch_set`` and ``exists`` of ``HiCacheStorage``."""

    def _tensor_key(self, key: str) -> Optional[str]:
        view = self._kv_view
        return view.object_keys([key])[0] if view is not None and view.objects_per_page == 1 else None

    def _registered_range(self, ptr: int, nbytes: int) -> bool:
        starts = [s for s, _ in self._registered]
        i = bisect.bisect_right(starts, ptr) - 1
        return i >= 0 and ptr + nbytes <= self._registered[i][1]

    def _put_tensor(self, skey: str, value: torch.Tensor) -> bool:
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        nbytes = t.numel() * t.element_size()
        if t.is_contiguous() and nbytes and self._registered_range(t.data_ptr(), nbytes):
            return self.store.batch_put_from([skey], [t.data_ptr()], [nbytes])[0] == 0
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        return self.store.put(skey, memoryview(raw)) == 0

    def _put_one(self, skey: str, value: Any = None, ptr: Any = None, size: Any = None) -> bool:
        if self.store.batch_is_exist([skey])[0] == 1:
            return True  # already stored
        if isinstance(value, torch.Tensor):
            return self._put_tensor(skey, value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.store.put(skey, value) == 0
        if ptr is not None and size is not None:
            ptr, size = int(ptr), int(size)
            if self._registered_range(ptr, size):
                return self.store.batch_put_from([skey], [ptr], [size])[0] == 0
            return self.store.put(skey, ctypes.string_at(ptr, size)) == 0
        raise ValueError("set needs a tensor value, bytes, or target_location and target_sizes")

    def _get_into(self, skey: str, ptr: int, nbytes: int, copy_in) -> bool:
        """Read the value into ``nbytes`` at ``ptr``: straight from the store when the range is
        registered, else through ``copy_in(bytes)``."""
        if self._registered_range(ptr, nbytes):
            return self.store.batch_get_into([skey], [ptr], [nbytes])[0] == nbytes
        data = self.store.get(skey)
        if not data or len(data) != nbytes:
            return False
        copy_in(data)
        return True

    def _get_tensor(self, skey: str, target: torch.Tensor) -> Optional[torch.Tensor]:
        nbytes = target.numel() * target.element_size()
        if target.device.type == "cpu" and target.is_contiguous() and nbytes:
            def copy_in(data: bytes) -> None:
                target.view(-1).view(torch.uint8).copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return target if self._get_into(skey, target.data_ptr(), nbytes, copy_in) else None
        data = self.store.get(skey)
        if len(data) != nbytes or not data:
            return None
        target.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8).view(target.dtype).reshape(target.shape))
        return target

    def _get_one(self, skey: str, target: Any = None, size: Any = None) -> Any:
        if isinstance(target, torch.Tensor):
            return self._get_tensor(skey, target)
        if target is not None and size is not None:
            ptr, size = int(target), int(size)
            ok = self._get_into(skey, ptr, size, lambda data: ctypes.memmove(ptr, data, size))
            return target if ok else None
        data = self.store.get(skey)
        if not data:
            return None
        out = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        dtype = getattr(self.mem_pool_host, "dtype", None)
        if isinstance(dtype, torch.dtype) and len(data) % dtype.itemsize == 0:
            out = out.view(dtype)
        return out

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None) -> Optional[torch.Tensor]:
        try:
            skey = self._tensor_key(key) if self._usable() else None
            return None if skey is None else self._get_one(skey, target_location, target_sizes)
        except Exception:
            self._warn("get", "mooncake-hicache: get failed; reporting a miss", exc_info=True)
            return None

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[Optional[torch.Tensor]]:
        targets = list(target_locations) if target_locations is not None else [None] * len(keys)
        sizes = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        return [self.get(k, t, s) for k, t, s in zip(keys, targets, sizes)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        try:
            skey = self._tensor_key(key) if self._usable() else None
            if skey is None:
                return False
            if self.is_mla and not self.is_writer:
                return True  # MLA: the writer rank stores what every rank reads
            return self._put_one(skey, value, target_location, target_sizes)
        except Exception:
            self._warn("set", "mooncake-hicache: set failed", exc_info=True)
            return False

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        vals = list(values) if values is not None else [None] * len(keys)
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        sizes = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        return all([self.set(k, v, l, s) for k, v, l, s in zip(keys, vals, locs, sizes)])

    def exists(self, key: str) -> bool:
        try:
            skey = self._tensor_key(key) if self._usable() else None
            return skey is not None and self.store.batch_is_exist([skey])[0] == 1
        except Exception:
            self._warn("exists1", "mooncake-hicache: exists failed; reporting a miss", exc_info=True)
            return False
