"""sources -> load -> explain -> write, in batches, with loading and writing overlapping the model.

Decoding and preprocessing run ahead in a thread pool (a bounded number of images), the model
works on one batch at a time, and rendering, encoding and writing run in another pool. Records
come out in input order; memory stays flat however many images there are.

Every output file on disk has its manifest record: records are appended as soon as an image's
files are written, and when a run stops early (Ctrl-C, SIGTERM, a full disk, a broken
``--json`` pipe) the write jobs already running finish and get their records, the others are
cancelled, and only then does the exception go on.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from camcli.config import RunConfig, Summary
from camcli.engines.batch import BatchWork, Loaded, Plan, RecordSink, run_settings
from camcli.errors import CamcliError
from camcli.explain import Explainer
from camcli.outfolder import Key, OutputFolder, Record
from camcli.signals import interrupts_ignored, interrupts_raise
from camcli.sources import Source, is_video_name
from camcli.targets import Target

Job = Future[list[Record]] | list[Record]


class Pipeline:
    """Runs one explainer over many sources, calling ``on_record`` for each manifest record.

    ``name_layers``: the layers were chosen by the user (``--layer``), so they go in the
    output names and maps of different layers live side by side. ``settings`` (default:
    ``run_settings``) go in every record, and ``--skip-existing`` compares them.
    """

    def __init__(
        self,
        explainer: Explainer,
        targets: Sequence[Target],
        config: RunConfig,
        on_record: Callable[[Record], None] = lambda r: None,
        on_progress: Callable[[int], None] = lambda n: None,
        *,
        name_layers: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.on_record = on_record
        self.on_progress = on_progress
        if settings is None:
            settings = run_settings(explainer, config, targets=targets)
        # What one batch becomes (load, explain, write) is the engines' shared per-batch work.
        self.work = BatchWork(explainer, targets, config, settings, name_layers=name_layers)

    def run(self, sources: Sequence[Source], folder: OutputFolder | None = None) -> Summary:
        """Explain and write every source into ``folder`` (default: ``config.out``, opened and
        locked here). SIGINT and SIGTERM stop the run as ``camcli.signals.Interrupted``."""
        with contextlib.ExitStack() as stack:
            if folder is None:
                folder = stack.enter_context(OutputFolder(self.config.out, self.config.shard))
            stack.enter_context(interrupts_raise())
            return self._run(sources, folder)

    def _run(self, sources: Sequence[Source], folder: OutputFolder) -> Summary:
        config = self.config
        self.work.temp_dir = folder.temp_dir
        previous = folder.previous() if config.skip_existing else {}
        summary = Summary(total=len(sources))
        pending: deque[Job] = deque()
        load_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="camcli-load")
        write_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="camcli-write")

        emit = RecordSink(folder, summary, self.on_record, self.on_progress)

        def drain(limit: int) -> None:
            while pending and (
                len(pending) > limit or isinstance(pending[0], list) or pending[0].done()
            ):
                head = pending[0]
                records = head if isinstance(head, list) else head.result()
                emit(records)
                # Popped only once recorded: an interrupt in between records it twice (the
                # manifest keeps the last), never not at all.
                pending.popleft()

        try:
            # A run of images goes in batches; a video, after the images before it are
            # recorded, is its own batches of frames (``BatchWork.video``).
            for video, group in itertools.groupby(sources, lambda s: is_video_name(s.path)):
                if video:
                    drain(limit=0)
                    for source in group:
                        emit(self._video(source, previous))
                    continue
                for batch in self._batches(list(group), load_pool, previous):
                    good = [(plan, r) for plan, r in batch if not isinstance(r, list)]
                    written = iter(self._explain(good, write_pool) if good else [])
                    for _, result in batch:  # keep input order in the manifest
                        pending.append(result if isinstance(result, list) else next(written))
                    drain(limit=4 * config.batch_size)
            drain(limit=0)
            folder.compact()
        except BaseException:
            with interrupts_ignored():
                self._finish(pending, folder, emit)
            raise
        finally:
            load_pool.shutdown(wait=True, cancel_futures=True)
            write_pool.shutdown(wait=True, cancel_futures=True)
        return summary

    @staticmethod
    def _finish(
        pending: deque[Job], folder: OutputFolder, emit: Callable[[list[Record]], None]
    ) -> None:
        """After an early stop: the write jobs not started are cancelled, those running are
        waited for, and every image whose files were written gets its records."""
        for job in pending:
            if isinstance(job, Future):
                job.cancel()
        for job in pending:
            if isinstance(job, list):
                records = job
            elif job.cancelled() or job.exception() is not None:
                continue  # nothing written, or its files removed (``BatchWork.write``)
            else:
                records = job.result()
            try:
                emit(records)
            except CamcliError:
                return  # the manifest cannot be written (a full disk): nothing more to save
            except Exception:  # on_record failed: the stop under way goes on regardless
                continue

    def _batches(
        self, sources: Sequence[Source], pool: ThreadPoolExecutor, previous: Mapping[Key, Record]
    ) -> Iterator[list[tuple[Plan, Loaded | list[Record]]]]:
        """Batches of (plan, loaded image or ready records), loading ``2 * batch`` ahead.

        Each read job loads ``BatchWork.files_per_read`` sources (one, or a batched nvJPEG
        decode's worth on the tensor stages); an entry ahead is its job and its place in it.
        """
        size = self.config.batch_size
        per_job = self.work.files_per_read
        Read = tuple[Future[list[Loaded | list[Record]]], int]
        ahead: deque[tuple[Plan, Read | list[Record]]] = deque()
        feed = iter(sources)

        def submit_next() -> bool:
            entries: list[tuple[Plan, int | list[Record]]] = []
            reads: list[Plan] = []
            while len(entries) < per_job:
                source = next(feed, None)
                if source is None:
                    break
                plan = self.work.plan(source)
                skipped = self.work.skipped(plan, previous) if self.config.skip_existing else None
                entries.append((plan, skipped if skipped is not None else len(reads)))
                if skipped is None:
                    reads.append(plan)
            job = pool.submit(self.work.read_many, reads) if reads else None
            for plan, what in entries:
                if isinstance(what, list):
                    ahead.append((plan, what))
                else:
                    assert job is not None  # there was something to read
                    ahead.append((plan, (job, what)))
            return bool(entries)

        while len(ahead) < 2 * size and submit_next():
            pass
        batch: list[tuple[Plan, Loaded | list[Record]]] = []
        while ahead:
            plan, entry = ahead.popleft()
            if len(ahead) < 2 * size:
                submit_next()
            if isinstance(entry, list):
                batch.append((plan, entry))
            else:
                job, index = entry
                batch.append((plan, job.result()[index]))
            if len(batch) >= size or not ahead:
                yield batch
                batch = []

    def _video(self, source: Source, previous: Mapping[Key, Record]) -> list[Record]:
        plan = self.work.plan(source)
        skipped = self.work.skipped(plan, previous) if self.config.skip_existing else None
        return skipped if skipped is not None else self.work.video(plan)

    def _explain(self, good: list[tuple[Plan, Loaded]], pool: ThreadPoolExecutor) -> list[Job]:
        """Explain one batch; per image, its write job in ``pool`` (or its error records)."""
        return [j if isinstance(j, list) else pool.submit(j) for j in self.work.explain(good)]
