"""The task runner: bounded tasks in flight (the coordinator's memory does not grow with the
number of slides or shards), results in order where asked, a failure stops the rest."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from wsizarr.extraction._execution import TaskRunner, shard_tasks
from wsizarr.extraction._options import ExecutionOptions

_lock = threading.Lock()
_running = {"now": 0, "most": 0, "started": 0}


def _task(i: int) -> int:
    with _lock:
        _running["now"] += 1
        _running["started"] += 1
        _running["most"] = max(_running["most"], _running["now"])
    time.sleep(0.002 * (i % 3))  # finish out of order
    with _lock:
        _running["now"] -= 1
    return i


def _failing(i: int) -> int:
    if _task(i) == 13:
        raise ValueError("task 13 failed")
    return i


def _consumed(items_made: list[int], n: int):
    for i in range(n):
        items_made.append(i)
        yield i


@pytest.mark.parametrize("how", ["ordered", "unordered"])
def test_runner_keeps_a_bounded_window_of_tasks(how):
    made: list[int] = []
    _running.update(now=0, most=0, started=0)
    with TaskRunner(ExecutionOptions(workers=2)) as runner:
        results = getattr(runner, how)(_task, _consumed(made, 200), window=5)
        seen = []
        for result in results:
            seen.append(result)
            assert len(made) <= len(seen) + 5  # inputs are drawn only as results are taken
    assert sorted(seen) == list(range(200))
    if how == "ordered":
        assert seen == sorted(seen)
    assert _running["most"] <= 2


def test_a_failed_task_stops_the_run():
    _running.update(now=0, most=0, started=0)
    with pytest.raises(ValueError, match="task 13 failed"):
        with TaskRunner(ExecutionOptions(workers=2)) as runner:
            for _ in runner.unordered(_failing, range(1000), window=4):
                pass
    assert _running["started"] < 100  # the rest were never submitted


def test_shard_tasks_are_made_as_needed():
    tasks = shard_tasks(1000, 256, done=None)
    assert next(tasks).stop == 256
    done = [True, False, True, False]
    assert [(t.index, t.start, t.stop) for t in shard_tasks(1000, 256, np.array(done))] == [(1, 256, 512), (3, 768, 1000)]
