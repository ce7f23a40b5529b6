"""The engine's events (README, "Events") through the binding, against the sandbox."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

import fhirbulk


def test_events_tell_what_the_export_did_while_another_thread_iterates(sandbox):
    truth = sandbox.truth(level="group", group="g1", _type="Patient,Observation")
    got = []
    with fhirbulk.export(sandbox.url("polls=2"), group="g1", types=["Patient", "Observation"],
                         event_queue_size=100000) as job:
        reader = threading.Thread(target=lambda: got.extend(job.events(timeout=None)))
        reader.start()
        counts = {}
        for r in job:
            counts[r["resourceType"]] = counts.get(r["resourceType"], 0) + 1
        reader.join(30)
        assert not reader.is_alive()
        assert counts == truth
        files = job.files
        assert job.events_dropped == 0
        assert list(job.events()) == [], "nothing after the last event"
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    assert got[0].type == "kickoff" and got[0]["status_url"].startswith("http")
    assert got[-1].type == "completed" and got[-1]["files"] == len(files)
    assert [e["poll"] for e in got if e.type == "status"] == [1, 2]
    completed = [e for e in got if e.type == "file_completed"]
    assert sorted(e["index"] for e in completed) == list(range(len(files)))
    assert sum(e["lines"] for e in completed) == sum(truth.values())
    assert all(isinstance(e.time, dt.datetime) and e.time.tzinfo is not None for e in got)
    assert got[0].time <= got[-1].time
    d = got[0].to_dict()
    assert d["type"] == "kickoff" and d["seq"] == 1 and d["time"].endswith("Z")


def test_events_between_records_and_a_failure_last(sandbox):
    with pytest.raises(fhirbulk.NotFoundError) as info:
        with fhirbulk.export(sandbox.url(), group="no-such-group") as job:
            try:
                list(job)
            finally:
                events = list(job.events())
    assert events[-1].type == "failed", events
    assert events[-1]["error"]["name"] == "not_found"
    # The error's parts come from the library's structured calls.
    e = info.value
    assert e.http_status == 404 and e.url.endswith("/Group/no-such-group/$export")
    assert e.message.startswith("export kick-off failed: HTTP 404") and "(http" not in e.message
    assert e.issues[0] == {"severity": "error", "code": "not-found",
                           "diagnostics": "unknown Group/no-such-group"}


def test_events_of_a_closed_export_raise(sandbox):
    job = fhirbulk.export(sandbox.url(), group="g1", types="Patient")
    job.close()
    with pytest.raises(ValueError):
        next(job.events())
    assert job.events_dropped == 0
