"""The run's progress: one bar on process 0 over the whole run, moved by every process's completions.

Every process records how many examples it finished in this invocation (`RunFolder.record_progress`, one
tiny file per process, rewritten after each example); a thread of process 0 adds them up every second,
so the bar moves with all processes, also while process 0 waits for the others at the last barrier. Its
total is the run's examples (when the split's size or --limit is known) and it starts at those done by
earlier invocations, so its rate and ETA are this invocation's.
"""

from __future__ import annotations

import sys
import threading

from tqdm import tqdm

from .store import RunFolder

POLL_SECONDS = 1.0


class RunProgress:
    """Process 0's bar (`total` examples in the run or None, `done` of them before); a context manager that
    polls the processes' counts while open and shows the final count when it closes."""

    def __init__(self, folder: RunFolder, total: int | None, done: int, processes: int):
        self.folder, self.done = folder, done
        description = "evaluating" if processes == 1 else f"evaluating ({processes} processes)"
        self.bar = tqdm(total=total, initial=done, unit="example", file=sys.stderr, desc=description)
        self.stopped = threading.Event()
        self.poller = threading.Thread(target=self._poll, name="progress", daemon=True)

    def __enter__(self) -> "RunProgress":
        self.poller.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.poller.join()
        self.refresh()
        self.bar.close()

    def refresh(self) -> None:
        self.bar.update(self.done + self.folder.progress_examples() - self.bar.n)

    def _poll(self) -> None:
        while not self.stopped.wait(POLL_SECONDS):
            self.refresh()
