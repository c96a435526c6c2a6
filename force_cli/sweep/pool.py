"""`force sweep --jobs N`: a sweep's cells in N worker processes, results recorded by the parent.

Why it is safe:

- **Same numbers as a serial run.** A worker runs the very ``run_cell`` of a serial sweep, and
  every cell seeds what it draws (``torch.manual_seed`` before pruning and training, seeded
  generators for the data order), so a cell's numbers do not depend on the cells run before it in
  the same process.
- **One writer.** Workers only write inside their own cell's folder and send their record back;
  the parent alone appends to ``results.jsonl`` (no interleaved lines) and holds the sweep
  folder's lock until every worker has exited.
- **Interruption.** Workers are started with Ctrl-C ignored, so only the parent hears it; the
  parent then sends each worker SIGTERM: a training cell saves its partial checkpoint (as
  ``force train`` does), any other work stops at once; the parent waits for them, records every
  cell that finished, and re-raises. Re-running the sweep resumes as after a serial interruption.
- **No orphans.** A worker dies with its parent (``parent_death``: SIGKILL from the kernel when
  the parent ends), so a parent killed outright (``kill -9``, the OOM killer) leaves no worker
  training and holding its cell's locks; the same command run again resumes.
- **spawn, not fork**: a forked copy of a process that has started torch's thread pools can hang.
- **One GPU per worker**: worker i sees only GPU ``i mod G`` of the G this process sees (its own
  ``CUDA_VISIBLE_DEVICES``), so ``--jobs G`` on a G-GPU node runs one cell per GPU. A cell's
  numbers do not depend on which GPU it ran on (up to the GPU model's arithmetic).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from force_cli.config import Recipe
from force_cli.errors import ForceError, RunFailed, TrainingInterrupted
from force_cli.models.trust import adopt_trust, current_trust
from force_cli.parent_death import die_with_parent

POLL_SECONDS = 0.5  # how often the parent checks that its workers are alive while waiting


class WorkerDied(RunFailed):
    """A worker process ended without reporting (killed from outside, out of memory): the input was
    fine but the run failed, so exit code 1, as for a diverged training."""


def worker_threads(jobs: int) -> int:
    """Torch threads per worker: this process's share, at least one.

    The one place to change when the thread count comes from elsewhere (a ``--threads`` option)."""
    return max(1, torch.get_num_threads() // jobs)


def worker_gpus(count: int) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each of ``count`` workers: the GPUs this process sees, taken
    in turn; None for every worker when it sees none (a CPU run leaves the variable alone)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip()]
    else:
        gpus = [str(i) for i in range(torch.cuda.device_count())]
    return [gpus[i % len(gpus)] if gpus else None for i in range(count)]


def run_parallel(recipe: Recipe, cells: list, out_dir: Path, jobs: int, hooks, finish: Callable) -> None:
    """Run ``cells`` in ``jobs`` worker processes; call ``finish(cell, record)`` here, in the parent,
    for each cell as it ends. Hooks: ``on_cell_start`` (its index: the cells finished so far, plus
    one, as in a serial run) and ``on_warning`` are called here too; ``prune_step`` and
    ``train_callbacks`` cannot cross processes and are not called."""
    ctx = multiprocessing.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    for cell in cells:
        tasks.put(cell)
    count = min(jobs, len(cells))
    for _ in range(count):
        tasks.put(None)  # one "no more cells" per worker
    args = (os.getpid(), recipe, out_dir, worker_threads(jobs), current_trust(), tasks, events)
    workers = [ctx.Process(target=_worker, args=(*args, gpu), daemon=True, name=f"force-sweep-{i}")
               for i, gpu in enumerate(worker_gpus(count))]
    by_key = {cell.key: cell for cell in cells}
    finished = running = 0
    try:
        with _signals_noted() as noted:
            with _sigint_ignored():  # inherited through spawn: a worker never hears the terminal's Ctrl-C
                for w in workers:
                    w.start()
                    running += 1
            while running:
                try:
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    event = None
                if event is None:
                    pass
                elif event[0] == "start":  # index as in a serial run: the cells finished before it, plus one
                    if hooks.on_cell_start:
                        hooks.on_cell_start(by_key[event[1]], finished + 1, len(cells))
                elif event[0] == "warning":
                    if hooks.on_warning:
                        hooks.on_warning(by_key[event[1]], event[2])
                elif event[0] == "done":
                    finish(by_key[event[1]["cell"]], event[1])
                    finished += 1
                elif event[0] == "exit":
                    running -= 1
                else:  # "error": a cell failed; stop the others, then raise it
                    raise event[1]
                noted.raise_pending()  # here, never inside get(), which a signal could cut mid-message
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise WorkerDied(f"a sweep worker died (exit code {dead[0].exitcode}); the finished cells "
                                     f"are kept in {out_dir}; run the same command again to continue")
    except BaseException:
        _stop(workers, events, by_key, finish)
        raise
    finally:
        tasks.cancel_join_thread()  # cells never handed out must not keep this process from exiting
        for w in workers:
            if w.pid is not None:
                w.join()


def _stop(workers, events, by_key, finish) -> None:
    """SIGTERM every worker, wait for all of them, and record the cells that finished meanwhile.

    A second Ctrl-C or SIGTERM while waiting kills the workers at once: their cells in training
    lose the progress since their last save, and what they were sending is not read (a killed
    writer can leave half a message); the cells already recorded stay recorded."""
    with _signals_noted() as noted:
        for w in workers:
            if w.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    w.terminate()
        while any(w.is_alive() for w in workers) or not events.empty():
            if noted.pending:
                for w in workers:
                    if w.is_alive():
                        w.kill()
                        w.join()
                return
            try:
                event = events.get(timeout=0.1)
            except queue.Empty:
                continue
            if event[0] == "done":
                finish(by_key[event[1]["cell"]], event[1])


@contextlib.contextmanager
def _sigint_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Noted:
    """Signals received while waiting on workers, acted on at a safe point by the previous handler."""

    def __init__(self, previous: dict):
        self.previous, self.pending = previous, []

    def note(self, signum, frame) -> None:
        self.pending.append(signum)

    def raise_pending(self) -> None:
        if self.pending:
            signum = self.pending.pop(0)
            handler = self.previous.get(signum)
            if callable(handler):
                handler(signum, None)  # the CLI's: KeyboardInterrupt for Ctrl-C, its Terminated for SIGTERM
            if handler is not signal.SIG_IGN:
                raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_noted():
    if threading.current_thread() is not threading.main_thread():
        yield _Noted({})
        return
    noted = _Noted({})
    noted.previous = {sig: signal.signal(sig, noted.note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield noted
    finally:
        for sig, old in noted.previous.items():
            signal.signal(sig, old)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _worker(parent_pid, recipe, out_dir, threads, trusted, tasks, events, gpu) -> None:
    """Run cells from ``tasks`` until told to stop; report every start, warning, record and error."""
    die_with_parent(parent_pid)  # a parent killed outright (kill -9, OOM) must not leave us training
    if gpu is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    # imported once CUDA_VISIBLE_DEVICES is set: nothing the cells load may look at the GPUs before
    from force_cli.allocator import keep_freed_memory
    from force_cli.sweep.cell import SweepHooks, run_cell

    signal.signal(signal.SIGTERM, _raise_interrupt)  # outside training; training saves a partial instead
    torch.set_num_threads(threads)
    keep_freed_memory()  # as the parent did (a spawned worker starts with glibc's defaults)
    adopt_trust(trusted)  # the parent's opt-in to rebuild the recipe's model, not more
    hooks = SweepHooks(on_warning=lambda cell, text: events.put(("warning", cell.key, text)))
    try:
        try:
            while (cell := tasks.get()) is not None:
                events.put(("start", cell.key))
                events.put(("done", run_cell(recipe, cell, out_dir, hooks)))
        finally:  # from here on the worker is only leaving: the parent's SIGTERM must not cut its last message
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except (KeyboardInterrupt, TrainingInterrupted):
        pass  # stopped by the parent, which knows why
    except BaseException as exc:
        events.put(("error", _portable(exc)))
    events.put(("exit",))


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling (ForceError, TrainingDiverged, ...), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        kind = ForceError if isinstance(exc, ForceError) else RuntimeError
        return kind(f"{type(exc).__name__}: {exc}")
