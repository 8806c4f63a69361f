"""Crash recovery, CI-sized (issue 20): ten SIGKILL/restart cycles of bench/crash_recovery.py.

Each cycle sends random route, rollout and model-control operations, SIGKILLs the server
0-300 ms after one of them was sent, checks routes.json against the states the sequence
went through, restarts the server on the same state dir and checks what it restored and
that a route serves. The full run (200 cycles) is the bench script; this keeps CI honest
about the same checks.
"""

from __future__ import annotations

import sys

import pytest

from e2e_support import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.crash_recovery import run_campaign  # noqa: E402

RUNS = 10


@pytest.mark.timeout(90)
def test_kill_restart_cycles_keep_routes_consistent(tmp_path):
    summary = run_campaign(RUNS, seed=20, work=tmp_path)
    problems = "\n".join(summary["problems"])
    assert summary["runs"] == RUNS, problems
    assert summary["kills"] == RUNS and summary["kills_exit_sigkill"] == RUNS
    assert summary["restarts"] == RUNS and summary["restart_failures"] == 0, problems
    assert summary["inconsistent_states"] == 0, problems
    assert summary["corrupt_files"] == 0 and summary["restore_mismatches"] == 0, problems
    assert summary["temp_files_after_restart"] == 0, problems
    assert summary["serve_failures"] == 0, problems
    assert summary["unexplained_acks"] == 0, problems
    assert summary["ops_acked"] > RUNS  # the cycles did change routes
