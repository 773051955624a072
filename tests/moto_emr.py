"""Test-only help for EMR on the local moto server (moto 5.2.5), shared by the EMR CLI and DAG tests.

moto leaves the first step of a cluster RUNNING and the rest PENDING forever, and its instance groups
refuse ``Configurations`` (EMR accepts them per group). These hooks play EMR's part; the code under test
calls the same boto3 APIs as against AWS.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def emr_runs_steps(region: str, fail_stage: str | None = None, reason: str = "") -> Iterator[None]:
    """Complete every cluster's steps one after another, or fail the one of ``fail_stage`` (a step name's
    second word; later ones are cancelled, as ActionOnFailure=CANCEL_AND_WAIT does). A step added to a
    cluster whose earlier steps are done starts running, as on EMR."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    stop = threading.Event()

    def advance() -> None:
        while not stop.is_set():
            backend = emr_backends[DEFAULT_ACCOUNT_ID][region]
            for cluster in list(backend.clusters.values()):
                for step in [s for s in cluster.steps if s.state == "RUNNING"]:
                    if fail_stage is not None and step.name.split(" ")[1] == fail_stage:
                        step.state = "FAILED"
                        step.last_state_change_reason = reason
                        for later in cluster.steps:
                            if later.state == "PENDING":
                                later.state = "CANCELLED"
                        continue
                    step.state = "COMPLETED"
                # The next step runs when none is running (also one added after the last completed).
                if not any(s.state == "RUNNING" for s in cluster.steps):
                    following = next((s for s in cluster.steps if s.state == "PENDING"), None)
                    if following is not None:
                        following.state = "RUNNING"
            stop.wait(0.02)

    thread = threading.Thread(target=advance, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def accept_instance_group_configurations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let moto's instance groups take and list ``Configurations``, as EMR's do."""
    from moto.emr.models import InstanceGroup

    init = InstanceGroup.__init__

    def init_with_configurations(self: Any, *args: Any, configurations: Any = None, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.configurations = configurations or []

    monkeypatch.setattr(InstanceGroup, "__init__", init_with_configurations)
