"""Peak bytes of tensor storage alive during a block of torch calls, measured by observing
every operator's outputs (a TorchDispatchMode): a real count of what the code allocated, on any
device, without timing or sampling."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes() as m: ...`` then ``m.peak`` (bytes above the level at entry)."""

    def __init__(self) -> None:
        super().__init__()
        self._refs: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._outside: set[int] = set()  # storages made before the block (inputs): not counted
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            self.current -= self._sizes.pop(key)
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for t in inputs:
            key = t.untyped_storage().data_ptr()
            if key not in self._refs:
                self._outside.add(key)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or any(t is i for i in inputs):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self._outside:
                continue
            if key not in self._refs:
                self._refs[key] = 0
                self._sizes[key] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self._refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out
