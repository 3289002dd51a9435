"""Background prefetch of the next steps' micro-batches, so the GPU never waits for data.

The source is any ``batch_for(step, micro) -> (inputs, targets)`` (``data`` builds it from the
stateless (seed, step) order): a worker thread calls it for the coming steps in order, pins the
tensors on CUDA and fingerprints them, and the loop takes whole steps, copied to the device with
``non_blocking=True``. The order is exactly that of calling the source step by step, so twins
and resumed runs still see identical batches.
"""

from __future__ import annotations

import queue
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

BatchSource = Callable[[int, int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class StepBatch:
    """One optimizer step's micro-batches, on the device, and the CRC32 of their inputs."""

    step: int
    micro_batches: list[tuple[Tensor, Tensor]]
    crc: int  # BF16 and QAT twins must see the same batches: the metrics rows show it


class Prefetcher:
    """Yields the micro-batches of steps ``start, start+1, ... < stop`` from a worker thread.

    ``depth`` steps are prepared ahead. Use as a context manager: leaving it stops the worker.
    An exception in the source is raised in the loop at the step that needed it.
    """

    def __init__(
        self,
        batch_for: BatchSource,
        n_micro: int,
        start: int,
        stop: int,
        device: torch.device | str,
        depth: int = 2,
    ) -> None:
        self._batch_for = batch_for
        self._n_micro = n_micro
        self._next_step = start
        self._stop_step = stop
        self._device = torch.device(device)
        self._pin = self._device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._worker = threading.Thread(
            target=self._fill, args=(start,), name="qat-sweep-prefetch", daemon=True
        )
        self._worker.start()

    def _fill(self, start: int) -> None:
        for step in range(start, self._stop_step):
            try:
                item: object = self._host_step(step)
            except BaseException as exc:  # handed to the loop, which raises it
                item = exc
            while not self._closed.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._closed.is_set() or isinstance(item, BaseException):
                return

    def _host_step(self, step: int) -> tuple[int, list[tuple[Tensor, Tensor]], int]:
        micro, crc = [], 0
        for m in range(self._n_micro):
            x, y = self._batch_for(step, m)
            crc = zlib.crc32(x.numpy().tobytes(), crc)
            if self._pin:
                x, y = x.pin_memory(), y.pin_memory()
            micro.append((x, y))
        return step, micro, crc

    def next(self) -> StepBatch:
        """The next step's micro-batches on the device (copies queued, not waited for)."""
        if self._next_step >= self._stop_step:
            raise RuntimeError(f"prefetch: no step after {self._stop_step - 1}")
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        step, micro, crc = item
        assert step == self._next_step, (step, self._next_step)
        self._next_step += 1
        on_device = [
            (x.to(self._device, non_blocking=self._pin), y.to(self._device, non_blocking=self._pin))
            for x, y in micro
        ]
        return StepBatch(step, on_device, crc)

    def close(self) -> None:
        self._closed.set()
        self._worker.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
