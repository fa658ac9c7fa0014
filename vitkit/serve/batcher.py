"""Dynamic batching: images from concurrent requests share one forward pass.

Requests put their images on a bounded queue and wait for their own results. One worker takes the first waiting
image, gathers more until the batch is full or `max_wait_s` has passed, and runs the batch on a single inference
thread, so the event loop keeps accepting requests meanwhile (and images that arrive during a forward pass make up the
next batch). A full queue is refused at once (`QueueFull`, answered 503) instead of growing without bound. Images of
requests that gave up (timeout, disconnect) are dropped before they reach the model.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

# infer(images (C, H, W) uint8, explain flags) -> one result per image
InferFn = Callable[[list[np.ndarray], list[bool]], list[Any]]


class QueueFull(Exception):
    """More images are waiting than the queue holds; the client should retry later."""


@dataclass
class _Job:
    image: np.ndarray
    explain: bool
    future: asyncio.Future


class Batcher:
    def __init__(self, infer: InferFn, max_batch: int = 32, max_wait_s: float = 0.002, max_queue: int = 256):
        self.infer, self.max_batch, self.max_wait_s, self.max_queue = infer, max_batch, max_wait_s, max_queue
        self.batches = 0  # forward passes run
        self.images = 0  # images inferred
        self._queue: asyncio.Queue[_Job] | None = None
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vitkit-infer")

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="vitkit-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, images: list[np.ndarray], explain: bool = False) -> list[Any]:
        """Results for `images`, in order. Raises `QueueFull` when they do not all fit in the queue now."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not awaited")
        if self.max_queue - self._queue.qsize() < len(images):
            raise QueueFull(f"{self._queue.qsize()} images are waiting (queue of {self.max_queue})")
        loop = asyncio.get_running_loop()
        jobs = [_Job(image, explain, loop.create_future()) for image in images]
        for job in jobs:
            self._queue.put_nowait(job)
        self._arrived.set()
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def _next_batch(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                break
        return [job for job in jobs if not job.future.done()]  # cancelled requests' images are dropped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.infer, [j.image for j in jobs],
                                                     [j.explain for j in jobs])
            except Exception as err:  # the requests get a 500; the server keeps serving
                log.exception("inference failed for a batch of %d image(s)", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.batches += 1
            self.images += len(jobs)
            for job, result in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result(result)


class DecodePool:
    """Image decoding on a fixed number of threads, with a bounded number of decodes waiting for one.

    A request that times out stops waiting, but its thread goes on decoding until the image is done: a slot is given
    back only when the work really ends, so abandoned decodes can neither pile up threads nor memory. Beyond
    `max_pending` decodes (running or waiting), `QueueFull`."""

    def __init__(self, threads: int, max_pending: int):
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="vitkit-decode")
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable, *args):
        with self._lock:
            if self._pending >= self.max_pending:
                raise QueueFull(f"{self._pending} images are being decoded or waiting for a decoder")
            self._pending += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)  # runs when the work ends (or is cancelled before it began)
        return await asyncio.wrap_future(future)

    def _release(self, _future) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
