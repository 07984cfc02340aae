"""One epoch of an FFCV pipeline on a background thread, with the lifetime FFCV 1.0.2's ``EpochIterator`` lacks.

This replaces ``ffcv.loader.epoch_iterator.EpochIterator`` (it runs the same compiled pipeline stages of
``Loader.code`` on buffers from ``Graph.allocate_memory``, one slot per batch in flight, and the same CUDA stream per
slot) and fixes on our side what it gets wrong:

- ``close()`` sets the stop event, drains the queue and *joins* the thread; FFCV's ``close`` only sets an event, and its
  final ``put(None)`` blocks forever when nobody reads, so an early ``break`` leaked a thread per epoch.
- An exception in the pipeline is re-raised in the consumer; FFCV's thread dies and ``__next__`` blocks forever.
- The thread sets numba's (thread-local) thread count only; FFCV's ``Compiler.set_num_threads`` also calls
  ``torch.set_num_threads`` for the whole process.
- A slot is released by a CUDA event recorded by the consumer after the batch's post-processing was enqueued, instead
  of FFCV's count-based guess of which slot the consumer is done with, and its pinned host buffer is rewritten only
  after its last non-blocking copy to the device has completed.
- Per-batch parameters (the crop boxes and flips of :mod:`deps_loaders.crops`) are written into the decoder's own
  buffer for the slot before the pipeline runs; this is how a numba decoder receives values that change every batch
  and epoch without recompiling.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
import torch

__all__ = ["EpochRunner"]

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _Producer:
    """The background half: runs the pipeline batch by batch into a bounded queue. Holds no reference to the
    consumer, so dropping the consumer's iterator lets it be collected and close this thread."""

    def __init__(self, loader: Any, batches: list[np.ndarray], prepare, check, num_threads: int, batches_ahead: int):
        self.loader = loader
        self.batches = batches
        self.prepare, self.check = prepare, check
        self.num_threads = num_threads
        self.slots = batches_ahead + 2
        self.queue: queue.Queue = queue.Queue(maxsize=batches_ahead)
        self.stop_event = threading.Event()
        self.cuda = torch.cuda.is_available()
        self.memory = loader.memory_manager.schedule_epoch(batches)
        self.memory.__enter__()
        try:
            self.state = self.memory.state
            self.buffers = loader.graph.allocate_memory(loader.batch_size, self.slots)
            self.code, self.outputs = loader.code
            self.streams = [torch.cuda.Stream() for _ in range(self.slots)] if self.cuda else None
            self.released: list[Any] = [None] * self.slots  # consumer done with the slot's device buffers
            self.copied: list[Any] = [None] * self.slots  # the slot's host→device copies have finished
        except BaseException:
            self.memory.__exit__(None, None, None)
            raise

    def put(self, item: object) -> bool:
        while not self.stop_event.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        numba.set_num_threads(self.num_threads)
        try:
            for b, indices in enumerate(self.batches):
                if self.stop_event.is_set():
                    return
                slot = b % self.slots
                result = self.run_batch(b, slot, indices)
                if not self.put((slot, b, result)):
                    return
            self.put(_END)
        except BaseException as e:  # re-raised by the consumer
            self.put(_Failure(e))

    def select(self, buffer: Any, slot: int, count: int) -> Any:
        if buffer is None:
            return None
        if isinstance(buffer, tuple):
            return tuple(self.select(x, slot, count) for x in buffer)
        return buffer[slot][:count]

    def run_batch(self, b: int, slot: int, indices: np.ndarray) -> tuple:
        self.memory.start_batch(b)
        n = len(indices)
        self.prepare(slot, b, indices, self.buffers["operation"])
        args = {
            "batch_indices": indices,
            "storage_state": self.state,
            "metadata": self.loader.reader.metadata,
            **{f"memory_{k}": self.select(v, slot, n) for k, v in self.buffers["operation"].items()},
            **{f"shared_memory_{k}": self.select(v, slot, n) for k, v in self.buffers["shared"].items()},
        }
        if self.cuda:
            stream = self.streams[slot]
            if self.copied[slot] is not None:
                # the decoder is about to overwrite this slot's pinned host buffer: its last non-blocking copy to the
                # device must be over (a CPU wait on this thread; FFCV only orders the GPU streams)
                self.copied[slot].synchronize()
            with torch.cuda.stream(stream):
                if self.released[slot] is not None:
                    stream.wait_event(self.released[slot])
                self.run_stages(args)
                self.copied[slot] = torch.cuda.Event()
                self.copied[slot].record(stream)
        else:
            self.run_stages(args)
        self.check(slot, indices, self.buffers["operation"])
        return tuple(args[f"result_{x}"] for x in self.outputs)

    def run_stages(self, args: dict) -> None:
        for stage_code, defined in self.code:
            results = stage_code(**args)
            for node_id, result in zip(defined, results):
                args[f"result_{node_id}"] = result


class EpochRunner:
    """Iterator over one epoch's batches of a prepared ``ffcv.loader.Loader``.

    ``batches`` are the sample indices of each batch. ``prepare(slot, b, indices, buffers)`` writes the parameters of
    batch ``b`` into the operations' buffers before the pipeline runs and ``check(slot, indices, buffers)`` validates
    after it (both on the loader thread); ``finish(result, b)`` runs on the consumer thread and turns the raw pipeline
    outputs of batch ``b`` into the yielded value (it must copy out of the slot's buffers, which are reused).
    """

    def __init__(
        self,
        loader: Any,
        batches: Sequence[np.ndarray],
        *,
        prepare: Callable[[int, int, np.ndarray, dict], None],
        check: Callable[[int, np.ndarray, dict], None],
        finish: Callable[[tuple, int], Any],
        num_threads: int,
        batches_ahead: int,
    ):
        self._finish = finish
        self._length = len(batches)
        self._closed = True  # until the thread runs, close() has nothing to do
        self._producer = _Producer(loader, list(batches), prepare, check, num_threads, batches_ahead)
        self._thread = threading.Thread(target=self._producer.run, daemon=True, name="deps-ffcv-epoch")
        self._closed = False
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def __iter__(self) -> EpochRunner:
        return self

    def __len__(self) -> int:
        return self._length

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        producer = self._producer
        while True:
            try:
                item = producer.queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    self.close()
                    raise RuntimeError("the FFCV loader thread stopped without finishing the epoch") from None
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        slot, b, result = item
        if producer.cuda:
            consumer = torch.cuda.current_stream()
            consumer.wait_stream(producer.streams[slot])
        out = self._finish(result, b)
        if producer.cuda:
            event = torch.cuda.Event()
            event.record(consumer)
            producer.released[slot] = event
        return out

    def close(self) -> None:
        """Stop the thread, wait for it, and release the epoch's memory; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        producer = self._producer
        producer.stop_event.set()
        while self._thread.is_alive():
            try:
                producer.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        producer.memory.__exit__(None, None, None)

    def __enter__(self) -> EpochRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
