"""One piece of work split across jobs (``datasets record --jobs N``, ``infer --jobs N``): contiguous ranges that every
job agrees on, a done marker per part, and a single claim on the final step.

The layout under a work's ``parts`` folder (built here and nowhere else)::

    plan.json               {"key": what is split (a content hash), "ranges": [[lo, hi], ...]}: written once, by
                            whichever job comes first; a rerun keeps it, so finished parts stay finished
    task-00003/             part 3's own files, written only by the job of part 3
    task-00003.done.json    part 3 is finished (what the final step needs to know about it)
    finish.claim            created (O_EXCL) by the one job that runs the final step

The job that finishes a part and finds every part done claims the final step; a job that finds a part missing leaves
it to the job of that part. A claim left by a job that died is cleared when the work is submitted again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import pathlib
import shutil
from typing import Any

from saev_ops import atomic, errors

log = logging.getLogger(__name__)


def split_ranges(n: int, unit: int, n_jobs: int) -> list[tuple[int, int]]:
    """``[0, n)`` as at most ``n_jobs`` contiguous, non-empty ranges whose bounds are multiples of ``unit`` (the last
    ends at ``n``), as even as whole units allow."""
    if n_jobs <= 0 or unit <= 0:
        raise errors.ConfigError(f"--jobs and the split unit must be > 0, got {n_jobs} and {unit}")
    units = -(-n // unit)
    k = max(1, min(n_jobs, units))
    bounds = [min(n, unit * (units * i // k)) for i in range(k + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a] or [(0, n)]


@dataclasses.dataclass(frozen=True)
class Parts:
    """The ``parts`` folder of one split piece of work."""

    root: pathlib.Path

    @property
    def plan_path(self) -> pathlib.Path:
        return self.root / "plan.json"

    @property
    def claim_path(self) -> pathlib.Path:
        return self.root / "finish.claim"

    def part_dir(self, task: int) -> pathlib.Path:
        return self.root / f"task-{task:05d}"

    def done_path(self, task: int) -> pathlib.Path:
        return self.root / f"task-{task:05d}.done.json"

    # -- the plan ----------------------------------------------------------------------------------------------------
    def plan(self, key: str, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The ranges every job uses: those of an existing plan for ``key`` (a rerun keeps its split, whatever
        ``--jobs`` says now), else ``ranges``, written once (concurrent first writers agree: one wins, all read it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": key, "ranges": [list(r) for r in ranges]})
        tmp = self.root / f".plan.{os.getpid()}.tmp"
        tmp.write_text(text)
        try:
            os.link(tmp, self.plan_path)  # creates plan.json only if it is not there: the first job's plan wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        atomic.fsync_dir(self.root)
        kept = self.read_plan(key)
        if kept != ranges:
            log.info("%s: keeping the split of the first submission (%d parts)", self.root, len(kept))
        return kept

    def read_plan(self, key: str) -> list[tuple[int, int]]:
        try:
            plan = json.loads(self.plan_path.read_text())
        except FileNotFoundError:
            raise errors.DataError(f"{self.plan_path}: missing: this work was not split (submit it with --jobs)") \
                from None
        except json.JSONDecodeError as exc:
            raise errors.DataError(f"{self.plan_path}: not valid JSON ({exc}); remove {self.root} and submit again") \
                from None
        if plan.get("key") != key:
            raise errors.DataError(f"{self.plan_path}: the split of other work (key {str(plan.get('key'))[:12]}, "
                                   f"expected {key[:12]}); remove {self.root} and submit again")
        return [(int(a), int(b)) for a, b in plan["ranges"]]

    # -- parts -------------------------------------------------------------------------------------------------------
    def done(self, task: int) -> dict[str, Any] | None:
        """What part ``task`` recorded when it finished, or None while it is not finished."""
        try:
            return dict(json.loads(self.done_path(task).read_text()))
        except FileNotFoundError:
            return None

    def mark_done(self, task: int, info: dict[str, Any]) -> None:
        atomic.write_json(self.done_path(task), info, indent=None)

    def unfinished(self, n_tasks: int) -> list[int]:
        return [i for i in range(n_tasks) if not self.done_path(i).exists()]

    def fresh_part(self, task: int) -> pathlib.Path:
        """Part ``task``'s folder, emptied (for work that cannot resume inside a part)."""
        return atomic.fresh_dir(self.part_dir(task))

    # -- the final step ----------------------------------------------------------------------------------------------
    def claim_finish(self, n_tasks: int) -> bool:
        """True for exactly one caller once every part is done: that caller runs the final step."""
        if self.unfinished(n_tasks):
            return False
        try:
            fd = os.open(self.claim_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        return True

    def clear_claim(self) -> None:
        """Forget a claim (a submission again: a job that claimed the final step and died leaves it behind)."""
        if self.claim_path.exists():
            log.warning("%s: clearing the final-step claim of an earlier attempt", self.root)
            self.claim_path.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
