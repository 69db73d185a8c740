"""Keeping a GPU busy while chunks travel: uploads one chunk ahead, downloads one chunk behind.

``Predictor.predict`` and ``matte_frames`` work through a batch chunk by chunk. Copied the plain
way, every chunk waits for its upload before computing and the host waits for the download
before queueing the next chunk, so the GPU idles during both copies. Here, on CUDA with the
data in host memory:

* :class:`Uploader`: while chunk k computes, chunk k+1 is copied into a pinned (page-locked)
  staging buffer by the host and sent to the device by a DMA on a side stream; the compute
  stream waits for that copy only when it takes the chunk. Two staging buffers alternate; a
  buffer is refilled only after its previous copy has finished (host-side event wait).
* :class:`Downloader`: a result is converted to its output dtype on the device, copied to a
  pinned buffer by a DMA on the side stream once the compute stream has produced it, and moved
  into the output by the host one chunk later (or at :meth:`Downloader.flush`), while the next
  chunk computes.

Everywhere else (CPU, MPS, data already on the device) both are plain synchronous copies with the
same results. ``BIREFNET_STREAMING=0`` turns the overlap off (for measuring what it gains:
``python -m birefnet_core bench gpu``).
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch

STREAMING_ENV = "BIREFNET_STREAMING"


def overlapped(source_device: torch.device, device: torch.device) -> bool:
    """Whether copies between ``source_device`` (host) and ``device`` are overlapped."""
    if os.environ.get(STREAMING_ENV, "1").strip() in ("0", "off", "false", "no"):
        return False
    return torch.device(device).type == "cuda" and torch.device(source_device).type == "cpu"


class Uploader:
    """Chunks ``source[start:stop]`` of a host tensor on ``device``, the next one prefetched.

    ``take(start, stop)`` returns the chunk on the device (the prefetched copy when it is the one
    asked for, else a direct copy); ``prefetch(start, stop)`` starts copying the chunk that will
    be taken next. Results are identical to ``source[start:stop].to(device)``."""

    def __init__(self, source: torch.Tensor, device: torch.device) -> None:
        self.source = source
        self.device = torch.device(device)
        self.overlap = overlapped(source.device, self.device)
        self._pending: Optional[Tuple[int, int, torch.Tensor, object]] = None
        self._staging: List[Optional[torch.Tensor]] = [None, None]
        self._events: List[Optional[object]] = [None, None]
        self._turn = 0
        self._stream = torch.cuda.Stream(self.device) if self.overlap else None
        self.prefetched = 0  # chunks served from a prefetch (for tests and benchmarks)

    def _stage(self, start: int, stop: int):
        turn, self._turn = self._turn, 1 - self._turn
        if self._events[turn] is not None:
            self._events[turn].synchronize()  # its previous DMA has read the buffer
        part = self.source[start:stop]
        buffer = self._staging[turn]
        if buffer is None or buffer.shape[0] < len(part) or buffer.shape[1:] != part.shape[1:] \
                or buffer.dtype != part.dtype:
            buffer = torch.empty(part.shape, dtype=part.dtype, pin_memory=True)
            self._staging[turn] = buffer
        staged = buffer[:len(part)]
        staged.copy_(part)
        with torch.cuda.stream(self._stream):
            on_device = staged.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        self._events[turn] = event
        return on_device, event

    def prefetch(self, start: int, stop: int) -> None:
        stop = min(stop, len(self.source))
        if not self.overlap or start >= stop:
            return
        self._pending = (start, stop, *self._stage(start, stop))

    def take(self, start: int, stop: int) -> torch.Tensor:
        stop = min(stop, len(self.source))
        pending, self._pending = self._pending, None
        if pending is not None and pending[:2] == (start, stop):
            _, _, chunk, event = pending
            torch.cuda.current_stream(self.device).wait_event(event)
            chunk.record_stream(torch.cuda.current_stream(self.device))
            self.prefetched += 1
            return chunk
        return self.source[start:stop].to(self.device)


class Downloader:
    """Writes device results into host outputs one chunk behind (see the module docstring).

    ``put(target, value)`` schedules ``target.copy_(value)`` (``target`` a host tensor or view,
    ``value`` on the device, converted to ``target``'s dtype on the device first); everything
    put is written by the next :meth:`put` of a later chunk (:meth:`next_chunk`) or by
    :meth:`flush`, which must run before the outputs are read (``with Downloader(...)`` does)."""

    def __init__(self, device: torch.device, host_device: torch.device) -> None:
        self.device = torch.device(device)
        self.overlap = overlapped(host_device, self.device)
        self._stream = torch.cuda.Stream(self.device) if self.overlap else None
        self._current: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._previous: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._previous_event = None

    def put(self, target: torch.Tensor, value: torch.Tensor) -> None:
        value = value.to(target.dtype)
        if not self.overlap or value.device.type != "cuda":
            target.copy_(value)
            return
        compute = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(compute)
        with torch.cuda.stream(self._stream):
            pinned = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            pinned.copy_(value, non_blocking=True)
        value.record_stream(self._stream)
        self._current.append((target, pinned))

    def next_chunk(self) -> None:
        """Finish the previous chunk's writes, and let this chunk's run while the next computes."""
        self._finish_previous()
        if self._current:
            event = torch.cuda.Event()
            event.record(self._stream)
            self._previous, self._previous_event, self._current = self._current, event, []

    def _finish_previous(self) -> None:
        if self._previous:
            self._previous_event.synchronize()
            for target, pinned in self._previous:
                target.copy_(pinned)
            self._previous, self._previous_event = [], None

    def flush(self) -> None:
        self.next_chunk()
        self._finish_previous()

    def __enter__(self) -> "Downloader":
        return self

    def __exit__(self, *_exc) -> None:
        self.flush()  # also on an error or a cancel: the chunks computed so far are written whole
