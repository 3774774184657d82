"""The head node's loop under faults: nobody consuming its queue, a host gone silent,
records that can never finish or are garbage, a worker slow to answer, leftovers at the
end, and signals; on the real services (and the embedded default where it applies) with
real Celery workers."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import TunaEnv, kill_tree

from tuna.celery_app.naming import queue_name


def head_line(env: TunaEnv, head: object, text: str) -> str:
    """The first line of the head node's log that holds ``text``, or ''."""
    return next((line for line in env.log_of(head).splitlines() if text in line), "")  # type: ignore[arg-type]


def test_a_head_node_with_no_consumer_says_so_and_runs_once_one_starts(tuna_env: TunaEnv) -> None:
    env = tuna_env
    other = env.setup_session(jobs=1, label="other")
    session = env.setup_session(jobs=3)
    env.start_worker(other)  # a worker of another session consumes another queue
    queue = queue_name("compile", env.settings.db_name, session)
    command = f"./go_fish.py example --session_id {session}"

    started = time.monotonic()
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    line = env.wait_for(lambda: head_line(env, head, "no worker consumes"), what="the no-consumer line", timeout=40)
    took = time.monotonic() - started

    assert took < 30, f"{took:.0f} s"
    assert queue in line and command in line, line
    assert head.poll() is None
    status = env.ok("example", "--session_id", str(session), "--status")
    assert f"no worker consumes queue {queue}" in status and command in status

    env.start_worker(session)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish")
    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 3}
    assert env.log_of(head).count("no worker consumes") <= 2  # a slow cadence, not every poll
