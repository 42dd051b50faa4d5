"""Server-side batching as TF Serving does it with `--enable_batching`: the stand-in's copy.

Copied from TF `tensorflow/core/kernels/batching_util/shared_batch_scheduler.h` (the
scheduler the model server uses, `bundle_factory_util.cc`: `using Batcher =
SharedBatchScheduler<BatchingSessionTask>`), `batching/batching_session.cc` and
`batching/batching_util.{h,cc}`:

* One scheduler with `num_batch_threads` threads for the whole server; one queue per loaded
  version and per set of feed and fetch names (BatchingSession's TensorSignature).
* A queue holds closed batches and, at its back, one open batch. A task larger than
  `max_batch_size` is refused with INVALID_ARGUMENT `Task size ...`; a task that does not fit
  the open batch while `max_enqueued_batches` batches (the open one included, those being
  processed not) are queued is refused with UNAVAILABLE `The batch scheduling queue ... is
  full; ...` (Queue::ValidateBatchTaskQueueCapacity).
* A free thread takes the oldest closed batch, or closes the open one once it is full or
  `batch_timeout_micros` old (Queue::ScheduleBatch, IsOpenBatchSchedulable).
* The batch's inputs are concatenated and padded to the smallest `allowed_batch_sizes` entry
  that holds them, padding rows copying the first row of the last task
  (BatchingSession::MergeInputTensors, RoundToLowestAllowedBatchSize); it runs once and each
  task gets its slice of the outputs back (SplitOutputTensors); padding rows are dropped.
* A batch whose every task is past its deadline fails with RESOURCE_EXHAUSTED
  (BatchingSession::ProcessBatch).

Not copied: large batch splitting (contract.tfs_protos' BatchingParameters has no such
field, so a file asking for it does not parse), priority queues,
`pad_variable_length_inputs`, per-model `batching_params.pbtxt`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from contract.errors import ConfigError
from contract.tfs_config import read_batching_parameters
from testdoubles.errors import StandInError
from testdoubles.tfs_status import TFSError, invalid

Arrays = dict[str, np.ndarray]
Process = Callable[[Arrays], Arrays]


@dataclass(frozen=True)
class BatchingOptions:
    """The queue options of one `batching_parameters.txt`; defaults are TF's QueueOptions."""

    max_batch_size: int = 1000  # input_batch_size_limit
    batch_timeout_s: float = 0.0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_file(cls, path: Path) -> BatchingOptions:
        """Read a BatchingParameters text proto, as `--batching_parameters_file` does."""
        try:
            params = read_batching_parameters(path)
        except ConfigError as exc:
            raise StandInError(str(exc)) from None
        return cls.from_proto(params)

    @classmethod
    def from_proto(cls, params: Any) -> BatchingOptions:
        """bundle_factory_util.h GetQueueOptions: only the fields that are set change a default."""
        defaults = cls()
        max_size = (
            params.max_batch_size.value
            if params.HasField("max_batch_size")
            else defaults.max_batch_size
        )
        allowed = tuple(params.allowed_batch_sizes)
        # bundle_factory_util.cc, WrapSessionForBatching.
        if allowed and allowed[-1] != max_size:
            raise StandInError(
                str(
                    invalid(
                        "Last entry in allowed_batch_sizes must match max_batch_size; last "
                        f"entry was {allowed[-1]}; expected {max_size}"
                    )
                )
            )
        for name, value in (
            ("max_batch_size", max_size),
            ("max_enqueued_batches", _value(params, "max_enqueued_batches", 1)),
            ("num_batch_threads", _value(params, "num_batch_threads", 1)),
        ):
            if value < 1:
                raise StandInError(f"{name} must be positive; was {value}")
        return cls(
            max_batch_size=max_size,
            batch_timeout_s=_value(params, "batch_timeout_micros", 0) / 1e6,
            max_enqueued_batches=_value(params, "max_enqueued_batches", 10),
            num_batch_threads=_value(params, "num_batch_threads", defaults.num_batch_threads),
            allowed_batch_sizes=allowed,
        )


def _value(params: Any, name: str, default: int) -> int:
    return int(getattr(params, name).value) if params.HasField(name) else default


# -- the tensor work: size, merge + pad, split (batching_util.h, batching_session.cc) -------


def task_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The 0th dimension every input shares (batching_util.h, ComputeTensorBatchSize)."""
    if not inputs:
        raise invalid("Batching Run() must have at least one input tensor")
    sizes = set()
    for array in inputs.values():
        if array.ndim < 1:
            raise invalid("Batching Run() input tensors must have at least one dimension")
        sizes.add(int(array.shape[0]))
    if len(sizes) > 1:
        raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


def round_to_allowed(size: int, allowed: Sequence[int]) -> int:
    """batching_util.cc, RoundToLowestAllowedBatchSize: the first allowed size that holds it."""
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size  # TF Serving logs "... ignoring allowed sizes constraint." and runs as is


def merge(tasks: Sequence[Task], allowed: Sequence[int], names: Mapping[str, str]) -> Arrays:
    """Concatenate the tasks' inputs and pad with copies of the last task's first row."""
    total = sum(t.size for t in tasks)
    padded = round_to_allowed(total, allowed)
    merged: Arrays = {}
    for alias in tasks[0].inputs:
        parts = [t.inputs[alias] for t in tasks]
        if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
            raise TFSError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Tensors with name '{names.get(alias, alias)}' from different tasks have "
                "different shapes and padding is turned off. Set pad_variable_length_inputs "
                "to true, or ensure that all tensors with the same name have equal dimensions "
                "starting with the first dim.",
            )
        if padded > total:
            parts.append(np.repeat(parts[-1][:1], padded - total, axis=0))
        merged[alias] = np.concatenate(parts, axis=0)
    return merged


def split(outputs: Arrays, tasks: Sequence[Task]) -> list[Arrays]:
    """Each task's rows of every output; padding rows at the end are dropped."""
    total = sum(t.size for t in tasks)
    for array in outputs.values():
        if array.ndim == 0:
            raise TFSError(
                grpc.StatusCode.FAILED_PRECONDITION, "Batched output tensor has 0 dimensions"
            )
        if array.shape[0] < total:
            raise TFSError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                "dimension sizes of the input tensors",
            )
    parts, start = [], 0
    for task in tasks:
        parts.append({k: v[start : start + task.size] for k, v in outputs.items()})
        start += task.size
    return parts


# -- tasks, batches, queues ------------------------------------------------------------------


@dataclass
class Task:
    """One Session::Run call waiting for its batch."""

    inputs: Arrays
    size: int
    deadline: float | None  # time.monotonic(); None: no deadline
    done: threading.Event = field(default_factory=threading.Event)
    outputs: Arrays | None = None
    error: TFSError | None = None

    def finish(self, outputs: Arrays | None = None, error: TFSError | None = None) -> None:
        self.outputs, self.error = outputs, error
        self.done.set()


@dataclass
class _Batch:
    tasks: list[Task] = field(default_factory=list)
    size: int = 0
    opened_at: float = 0.0


class BatchQueue:
    """One queue of the shared scheduler: tasks in, merged batches out to `process`."""

    def __init__(
        self,
        scheduler: SharedBatchScheduler,
        options: BatchingOptions,
        process: Process,
        tensor_names: Mapping[str, str],
    ) -> None:
        self._scheduler = scheduler
        self.options = options
        self._process = process
        self._names = dict(tensor_names)
        self._batches: deque[_Batch] = deque([_Batch()])  # the open batch is at the back
        self.processing = 0

    # Called with the scheduler's lock held.
    def _schedule(self, task: Task, now: float) -> None:
        limit = self.options.max_batch_size
        if task.size > limit:
            raise invalid(f"Task size {task.size} is larger than maximum input batch size {limit}")
        open_batch = self._batches[-1]
        if open_batch.size + task.size > limit:
            if len(self._batches) >= self.options.max_enqueued_batches:
                raise TFSError(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full; "
                    f"currently {len(self._batches)} batches enqueued and max_enqueued_batches "
                    f"is {self.options.max_enqueued_batches}",
                )
            open_batch = _Batch()
            self._batches.append(open_batch)
        if not open_batch.tasks:
            open_batch.opened_at = now
        open_batch.tasks.append(task)
        open_batch.size += task.size

    def _open_batch_due(self) -> float | None:
        """When the open batch may be closed (now if full), or None if it is empty."""
        open_batch = self._batches[-1]
        if not open_batch.tasks:
            return None
        if open_batch.size >= self.options.max_batch_size:
            return open_batch.opened_at
        return open_batch.opened_at + self.options.batch_timeout_s

    def _take(self, now: float) -> _Batch | None:
        """Queue::ScheduleBatch: the oldest closed batch, closing the open one when it is due."""
        if len(self._batches) == 1:
            due = self._open_batch_due()
            if due is None or due > now:
                return None
            self._batches.append(_Batch())
        self.processing += 1
        return self._batches.popleft()

    def _run_batch(self, batch: _Batch) -> None:
        """BatchingSession::ProcessBatch, outside the scheduler's lock."""
        tasks = batch.tasks
        now = time.monotonic()
        if all(t.deadline is not None and t.deadline <= now for t in tasks):
            error = TFSError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "Run() timeout exceeded while waiting in batching queue",
            )
            for task in tasks:
                task.finish(error=error)
            return
        try:
            merged = merge(tasks, self.options.allowed_batch_sizes, self._names)
            parts = split(self._process(merged), tasks)
        except Exception as exc:  # a failing batch fails its own tasks, never the thread
            error = (
                exc
                if isinstance(exc, TFSError)
                else TFSError(grpc.StatusCode.INTERNAL, f"stand-in batch failed: {exc!r}")
            )
            for task in tasks:
                task.finish(error=error)
            return
        for task, outputs in zip(tasks, parts, strict=True):
            task.finish(outputs=outputs)

    @property
    def enqueued_batches(self) -> int:
        """Batches waiting (the open one counts once it holds a task)."""
        return len(self._batches) - (0 if self._batches[-1].tasks else 1)

    def run(self, inputs: Arrays, *, deadline: float | None) -> Arrays:
        """Schedule one Session::Run and wait for its slice of the batch's outputs."""
        task = Task(inputs, task_size(inputs), deadline)
        self._scheduler.submit(self, task)
        while not task.done.wait(0.5):
            if self._scheduler.closed:
                raise TFSError(grpc.StatusCode.UNAVAILABLE, "the stand-in is shutting down")
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs


class SharedBatchScheduler:
    """The threads that run batches, shared by every queue (shared_batch_scheduler.h)."""

    def __init__(self, num_threads: int) -> None:
        self._cond = threading.Condition()
        self._queues: list[BatchQueue] = []
        self._next = 0
        self.closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"standin_batch_{i}", daemon=True)
            for i in range(num_threads)
        ]
        for thread in self._threads:
            thread.start()

    def add_queue(
        self, options: BatchingOptions, process: Process, tensor_names: Mapping[str, str]
    ) -> BatchQueue:
        queue = BatchQueue(self, options, process, tensor_names)
        with self._cond:
            self._queues.append(queue)
        return queue

    def remove_queue(self, queue: BatchQueue) -> None:
        """Stop scheduling for `queue` once its last batch is taken (an unloaded version)."""
        with self._cond:
            if queue in self._queues:
                self._queues.remove(queue)
            for batch in queue._batches:  # nobody can submit now: fail what is left
                for task in batch.tasks:
                    task.finish(error=TFSError(grpc.StatusCode.UNAVAILABLE, "servable unloaded"))
            queue._batches = deque([_Batch()])

    def submit(self, queue: BatchQueue, task: Task) -> None:
        with self._cond:
            if self.closed:
                raise TFSError(grpc.StatusCode.UNAVAILABLE, "the stand-in is shutting down")
            queue._schedule(task, time.monotonic())
            self._cond.notify()

    def stats(self) -> tuple[int, int]:
        """(batches being processed, batches enqueued) over every queue."""
        with self._cond:
            return (
                sum(q.processing for q in self._queues),
                sum(q.enqueued_batches for q in self._queues),
            )

    def _next_work(self) -> tuple[BatchQueue, _Batch] | float | None:
        """A batch to run (round robin over the queues), else how long until one is due."""
        now = time.monotonic()
        soonest: float | None = None
        n = len(self._queues)
        for i in range(n):
            queue = self._queues[(self._next + i) % n]
            batch = queue._take(now)
            if batch is not None:
                self._next = (self._next + i + 1) % n
                return queue, batch
            due = queue._open_batch_due()
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        return None if soonest is None else max(soonest - now, 0.0)

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self.closed:
                        return
                    work = self._next_work()
                    if isinstance(work, tuple):
                        break
                    self._cond.wait(work)
            queue, batch = work
            try:
                queue._run_batch(batch)
            finally:
                with self._cond:
                    queue.processing -= 1
                    self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
