"""Several processes (``torchrun``): the process group, and a command line's files shared out.

:func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), picks the
process's device (``cuda:LOCAL_RANK`` when CUDA is there) and starts the process group (NCCL on
CUDA, gloo otherwise, unless told). Training (``birefnet_core.train``) and the ``predict`` /
``video`` commands start their processes through it; without torchrun it starts nothing.

:class:`SharedJob` is how ``torchrun --nproc_per_node=N -m birefnet_core predict|video ...``
shares its input files:

- Every process computes the whole job (the same input list, folders sorted, the same output
  names as one process, the same checks of every output) and the processes compare it: an error anywhere (an output that
  exists, an input that is an output, a model that does not load) is raised by every process
  with the same one-line message, before any output is written (:meth:`SharedJob.agree`).
- Each process takes its share of the files (:func:`share`: round-robin, or by size for videos)
  and works through it without waiting for the others. A file that fails is recorded (its name
  and a one-line reason) and the next one follows.
- Progress goes through the rendezvous store, not through collectives: after each file (and each
  video chunk) a process adds to its own counters, which never waits for another process, so
  uneven shares cannot deadlock. Process 0 draws one bar for the whole job from the counters
  (on a terminal only, as the single-process bar).
- At the end each process publishes its result in the store and waits until every process has;
  process 0 then prints every failed file of the job, and every process exits with 1 when any
  file failed anywhere (0 otherwise). A process that shows no sign of life (its counters stand
  still) for ``BIREFNET_DIST_TIMEOUT`` seconds (default 1800) is given up: process 0 names the
  files it had not finished, and the others still end. (Under torchrun a process that dies makes
  torchrun stop the others at once: they end as on Ctrl-C, with complete outputs only.)

The processes talk over gloo even on GPUs: they exchange a few Python objects, never tensors;
gloo reports a peer that has gone instead of waiting on it, and processes may share a GPU
(more processes than GPUs), which NCCL refuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

TIMEOUT_ENV = "BIREFNET_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0  # torch's own default for gloo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    store: Optional[Any] = field(default=None, compare=False, repr=False)  # the rendezvous store (torchrun)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets ``WORLD_SIZE``) with
    more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def job_timeout() -> timedelta:
    """``BIREFNET_DIST_TIMEOUT`` seconds (default 1800): how long a process waits for another."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    return timedelta(seconds=max(seconds, 1.0))


def pick_device(device: Optional[str], local_rank: int, world_size: int) -> torch.device:
    """``device`` when given (``cuda`` without an index becomes ``cuda:LOCAL_RANK``), else
    ``cuda:LOCAL_RANK`` when CUDA is there, else mps (one process only) or cpu. More processes
    than GPUs share them in turn (``LOCAL_RANK`` modulo the GPU count)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    own_gpu = local_rank % gpus if gpus else local_rank
    if device is not None and device != "auto":
        target = torch.device(device)
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", own_gpu)
    elif gpus:
        target = torch.device("cuda", own_gpu)
    else:
        mps = getattr(torch.backends, "mps", None)
        usable = world_size == 1 and mps is not None and mps.is_available()
        target = torch.device("mps") if usable else torch.device("cpu")
    return target


def setup(device: Optional[str] = None, *, backend: Optional[str] = None,
          timeout: Optional[timedelta] = None) -> Context:
    """The process's place in the run, and its device (:func:`pick_device`). Under torchrun it
    starts the process group: ``backend`` (default NCCL on CUDA, else gloo), collectives and the
    store waiting at most ``timeout`` (default torch's)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    target = pick_device(device, local, world)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    store = None
    if world > 1:
        backend = backend or ("nccl" if target.type == "cuda" else "gloo")
        kwargs = {} if timeout is None else {"timeout": timeout}
        if dist.is_initialized():
            store = dist.distributed_c10d._get_default_store()
        else:
            store, rank, world = next(dist.rendezvous("env://", **kwargs))
            if timeout is not None:
                store.set_timeout(timeout)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, **kwargs)
    return Context(rank, world, local, target, store)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def share(count: int, rank: int, world_size: int, sizes: Optional[Sequence[float]] = None) -> List[int]:
    """The indices (in order) of the ``count`` items that process ``rank`` takes: round-robin, or
    with ``sizes`` the largest first to the least loaded process (ties to the lower rank), which
    evens out the work when it grows with the size (videos). The same on every process."""
    if sizes is None:
        return list(range(rank, count, world_size))
    load = [0.0] * world_size
    owner = [0] * count
    for i in sorted(range(count), key=lambda i: (-float(sizes[i]), i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += float(sizes[i])
    return [i for i in range(count) if owner[i] == rank]


class JobError(ValueError):
    """A job-wide error (the whole job's check, or the model), the same line on every process."""


def describe_error(exc: BaseException) -> str:
    """The line the command line prints after ``error:`` for ``exc`` (as :func:`cli.run_command`)."""
    from .cli import EXPECTED, one_line

    if isinstance(exc, EXPECTED):
        return one_line(exc)
    return (f"unexpected {type(exc).__name__}: {one_line(exc)} (a bug: please report it; BIREFNET_DEBUG=1 shows "
            "the traceback)")


def _terminated(signum, frame):  # torchrun stops the other processes with SIGTERM when one fails
    raise KeyboardInterrupt("stopped by the launcher (another process failed or was stopped)")


@dataclass
class Outcome:
    """What the whole job did: per process the files written, every failure ``(name, reason)``
    in input order, and the processes given up (``lost``)."""

    written: Dict[int, int]
    failures: List[Tuple[str, str]]
    lost: List[int]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.lost


class SharedJob:
    """One command's input files shared between the processes of a torchrun launch (see the
    module doc). ``job = SharedJob.start(args.device)``; every process then runs the
    same sequence of :meth:`agree` steps, :meth:`assign` s the items, works through
    ``job.mine`` calling :meth:`succeeded` / :meth:`failed` for each (and :meth:`beat` inside
    long ones), and ends with :meth:`finish`; :meth:`close` at last."""

    def __init__(self, ctx: Context, timeout: Optional[timedelta] = None) -> None:
        self.ctx = ctx
        self.rank, self.world = ctx.rank, ctx.world_size
        self.timeout = (timeout or job_timeout()).total_seconds()
        self.store = dist.PrefixStore("birefnet/job/", ctx.store)
        self.items: List[str] = []
        self.sizes: Optional[List[float]] = None
        self.mine: List[int] = []
        self.written = 0
        self.failures: List[Tuple[str, str]] = []
        self.bar = None
        self._refreshed = 0.0
        self._sigterm = None

    @classmethod
    def start(cls, device: Optional[str]) -> "SharedJob":
        """Join the launch: device ``cuda:LOCAL_RANK`` on CUDA (else ``device``), gloo between
        the processes (see the module doc), SIGTERM turned into an interrupt (outputs stay complete).
        Starting and the steps before the work wait at least torch's 30 minutes for a process
        (others start late, or load the model after process 0 downloaded it); a longer
        ``BIREFNET_DIST_TIMEOUT`` lengthens that too."""
        timeout = job_timeout()
        ctx = setup(device, backend="gloo", timeout=max(timeout, timedelta(seconds=DEFAULT_TIMEOUT_S)))
        job = cls(ctx, timeout)
        previous = signal.signal(signal.SIGTERM, _terminated)
        job._sigterm = previous if previous is not None else signal.SIG_DFL
        return job

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def prefix(self) -> str:
        return f"process {self.rank} of {self.world}"

    # ------------------------------------------------------------------ before the work

    def agree(self, step: Callable[[], Any], same: Optional[Callable[[Any], str]] = None) -> Any:
        """``step()`` on every process; its value here. When it raised on any process, every
        process raises :class:`JobError` with the first one's line; ``same(value)`` must be equal
        on every process (the inputs they see), else every process raises too."""
        value, error, check = None, None, ""
        try:
            value = step()
            check = same(value) if same is not None else ""
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's one line
            if os.environ.get("BIREFNET_DEBUG"):
                logger.exception("%s:", self.prefix)
            error = describe_error(exc)
        gathered: List[Any] = [None] * self.world
        try:
            dist.all_gather_object(gathered, (error, check))
        except RuntimeError as exc:  # gloo: a process has gone (or the timeout passed)
            raise RuntimeError(f"{self.prefix}: lost contact with the other processes while starting: "
                               f"{describe_error(exc)}") from None
        errors = [e for e, _ in gathered if e is not None]
        if errors:
            raise JobError(errors[0])
        if len({c for _, c in gathered}) > 1:
            raise JobError("the processes see different inputs (a folder changed while they started, or the nodes "
                           "do not share the same files): give every process the same files")
        return value

    def assign(self, items: Sequence[str], sizes: Optional[Sequence[float]] = None) -> List[int]:
        """Take this process's share of ``items`` (names, the same list on every process)."""
        self.items = [str(item) for item in items]
        self.sizes = None if sizes is None else [float(s) for s in sizes]
        self.mine = share(len(self.items), self.rank, self.world, self.sizes)
        return self.mine

    def load_in_turns(self, load: Callable[[], Any]) -> Any:
        """``load()`` (the model) on every process that has work, process 0 first (a download
        lands once, in its folder), then the first process of every other node, then the rest;
        agreed as :meth:`agree` (a model that fails anywhere ends every process alike)."""
        turn = 0 if self.rank == 0 else 1 if self.ctx.local_rank == 0 else 2
        value = None
        for step in range(3):
            got = self.agree(load if (step == turn and self.mine) else (lambda: None))
            if step == turn:
                value = got
        return value

    @staticmethod
    def fingerprint(items: Sequence[Any]) -> str:
        return hashlib.sha256(json.dumps([str(i) for i in items]).encode()).hexdigest()

    @classmethod
    def run(cls, device: Optional[str], body) -> int:
        """``body(job)``'s exit status as one process of the job; a :class:`JobError` ends it the
        same way on every process, and the job is closed whatever happens."""
        job = cls.start(device)
        try:
            return body(job)
        except JobError as exc:
            return job.fail(exc)
        finally:
            job.close()

    def fail(self, error: JobError) -> int:
        """End a job-wide error: its line on stderr here, then wait until every process has
        printed it (a process that ends with 1 makes torchrun stop the rest); status 1."""
        sys.stderr.write(f"error: {error}\n")  # one write: the processes share the terminal
        sys.stderr.flush()
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - ending anyway
            pass
        self._ending()
        return 1

    # ------------------------------------------------------------------ during the work

    def progress(self, description: str, stream=None):
        """Process 0's bar over the whole job (silent elsewhere and off a terminal)."""
        from .progress import ConsoleProgress

        self.bar = ConsoleProgress(len(self.items) if self.main else 0, description, stream=stream)
        return self.bar

    def beat(self, note: str = "") -> None:
        """A sign of life inside a long item (a video chunk)."""
        self.store.add(f"beat/{self.rank}", 1)
        self.refresh(note)

    def succeeded(self, name: str = "") -> None:
        self.written += 1
        self._advance(name)

    def failed(self, name: str, exc: BaseException) -> None:
        """Record ``name`` as failed (one-line reason) and go on with the next item."""
        from .cli import EXPECTED, one_line

        reason = one_line(exc) if isinstance(exc, EXPECTED) else f"{type(exc).__name__}: {one_line(exc)}"
        self.failures.append((name, reason))
        count = self.store.add(f"nfailed/{self.rank}", 1)
        self.store.set(f"failed/{self.rank}/{count}", json.dumps([name, reason]))
        logger.warning("%s: %s failed: %s (the others go on; listed at the end)", self.prefix, name, reason)
        self._advance(name)

    def _advance(self, note: str) -> None:
        self.store.add(f"pos/{self.rank}", 1)
        self.store.add(f"beat/{self.rank}", 1)
        self.refresh(note)

    def done_everywhere(self) -> int:
        return sum(self.store.add(f"pos/{r}", 0) for r in range(self.world))

    def refresh(self, note: str = "", force: bool = False) -> None:
        """Process 0 redraws its bar from every process's count (at most twice a second)."""
        if not self.main or self.bar is None or not self.bar.interactive:
            return
        now = time.monotonic()
        if not force and now - self._refreshed < 0.5:
            return
        self._refreshed = now
        self.bar.done = min(self.bar.total, self.done_everywhere())
        self.bar.update(0, note)

    # ------------------------------------------------------------------ after the work

    def finish(self, report: Callable[[Outcome], None]) -> int:
        """Publish this process's result, wait for every process's (giving up on one that shows
        no sign of life for the timeout), let process 0 ``report`` the :class:`Outcome`, and
        return the job's status: 0, or 1 when a file failed or a process was lost."""
        self.store.set(f"result/{self.rank}", json.dumps({"written": self.written}))
        pending = set(range(self.world))
        results: Dict[int, dict] = {}
        seen: Dict[int, Tuple[int, float]] = {}
        lost: List[int] = []
        try:
            while True:
                for r in sorted(pending):
                    if self.store.check([f"result/{r}"]):
                        results[r] = json.loads(self.store.get(f"result/{r}"))
                pending -= set(results)
                if not pending:
                    break
                now = time.monotonic()
                for r in pending:
                    beat = self.store.add(f"beat/{r}", 0)
                    if r not in seen or seen[r][0] != beat:
                        seen[r] = (beat, now)
                if all(now - seen[r][1] > self.timeout for r in pending):
                    lost = sorted(pending)
                    break
                self.refresh("waiting for the other processes")
                time.sleep(0.2)
            written = {r: int(res["written"]) for r, res in results.items()}
            for r in lost:  # what it finished before it stopped
                written[r] = self.store.add(f"pos/{r}", 0) - self.store.add(f"nfailed/{r}", 0)
            outcome = Outcome(dict(sorted(written.items())), self._all_failures(lost), lost)
        except (RuntimeError, ValueError) as exc:  # the store has gone: its host process ended
            lost = sorted(set(range(self.world)) - {self.rank} - set(results))
            outcome = Outcome({self.rank: self.written}, list(self.failures), lost)
            logger.warning("%s: lost contact with the other processes (%s); this process's own result follows",
                           self.prefix, describe_error(exc))
            if not self.main:
                self._ending()
                report(outcome)
                return 1
        self._ending()
        if self.bar is not None:
            if outcome.ok:
                self.bar.done = self.bar.total
                self.bar.update(0, "done")
            self.bar.close()
            self.bar = None
        if self.main:
            report(outcome)
            sys.stdout.flush()
            sys.stderr.flush()
            self._set_quietly("reported", "1")
        elif not outcome.ok and 0 not in outcome.lost:
            # ending with 1 makes torchrun stop the others: not before process 0 has reported
            try:
                self.store.wait(["reported"], timedelta(seconds=min(self.timeout, 60.0)))
            except Exception:  # noqa: BLE001 - ending anyway
                pass
        return 0 if outcome.ok else 1

    def _ending(self) -> None:
        """From here nothing is left to clean up: the SIGTERM torchrun sends once a process has
        ended with 1 is ignored rather than turned into an interrupt (this process ends anyway)."""
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._sigterm = None

    def _all_failures(self, lost: Sequence[int]) -> List[Tuple[str, str]]:
        failures: List[Tuple[str, str]] = []
        for r in range(self.world):
            for k in range(1, self.store.add(f"nfailed/{r}", 0) + 1):
                name, reason = json.loads(self.store.get(f"failed/{r}/{k}"))
                failures.append((name, reason))
        for r in lost:
            theirs = share(len(self.items), r, self.world, self.sizes)
            position = self.store.add(f"pos/{r}", 0)
            stopped = (f"not done: process {r} stopped (no sign of life for {self.timeout:g} s; its own log says "
                       "why)")
            failures.extend((self.items[i], stopped) for i in theirs[position:])
        order = {name: i for i, name in enumerate(self.items)}
        return sorted(failures, key=lambda f: order.get(f[0], len(order)))

    def _set_quietly(self, key: str, value: str) -> None:
        try:
            self.store.set(key, value)
        except Exception:  # noqa: BLE001 - the others end on their own timeout
            pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
        teardown()


def print_failures(outcome: Outcome, total: int, noun: str) -> None:
    """Every failed file of the job, one line each, and the summary line, on stderr."""
    for name, reason in outcome.failures:
        print(f"failed: {name}: {reason}", file=sys.stderr)
    if outcome.failures:
        print(f"error: {len(outcome.failures)} of {total} {noun}(s) failed (listed above); the outputs of the "
              "others are complete", file=sys.stderr)


__all__ = ["Context", "JobError", "Outcome", "SharedJob", "describe_error", "job_timeout", "launched",
           "pick_device", "print_failures", "setup", "share", "teardown"]
