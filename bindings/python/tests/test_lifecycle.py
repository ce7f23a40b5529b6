"""Cancel, Ctrl-C, leaving `with` early, and handles freed by the garbage collector."""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import fhirbulk

SLOW = "polls=0;slow=200"


def first_status_url(job: fhirbulk.Export) -> str:
    cp = job.checkpoint()
    assert cp and cp.get("status_url"), cp
    return cp["status_url"]


def test_cancel_mid_export(sandbox):
    total = sum(sandbox.truth(level="group", group="g1").values())
    t0 = time.monotonic()
    with fhirbulk.export(sandbox.url(SLOW), group="g1") as job:
        n = 0
        for _ in job.raw():
            n += 1
            if n == 1:
                status_url = first_status_url(job)
                job.cancel()
        assert job.cancelled
        assert job.progress.state == "cancelled"
        assert list(job) == []
    assert time.monotonic() - t0 < 5
    assert n == 1 < total  # the loop ended at the next record
    assert sandbox.wait_for_delete(status_url)


def test_cancel_from_another_thread_wakes_a_blocked_pull(sandbox):
    with fhirbulk.export(sandbox.url("polls=0;slow=2000"), group="g1") as job:
        it = job.raw()
        next(it)
        status_url = first_status_url(job)
        timer = threading.Timer(0.3, job.cancel)
        timer.start()
        t0 = time.monotonic()
        rest = sum(1 for _ in it)  # blocks in the native pull until cancel wakes it
        waited = time.monotonic() - t0
        timer.join()
    assert waited < 3, waited
    assert job.cancelled
    assert rest < sum(sandbox.truth(level="group", group="g1").values())
    assert sandbox.wait_for_delete(status_url)


def test_leaving_with_early_cancels_and_deletes(sandbox):
    base = fhirbulk.live_handles()
    with fhirbulk.export(sandbox.url(SLOW), group="g1") as job:
        next(iter(job))
        status_url = first_status_url(job)
        assert fhirbulk.live_handles() == base + 1
    assert fhirbulk.live_handles() == base
    assert job.closed and job.cancelled
    assert sandbox.wait_for_delete(status_url)
    # A closed export is like a closed file: iterating it raises, never gives zero records.
    for start in (lambda: iter(job), job.raw, job.records):
        with pytest.raises(ValueError, match="closed export"):
            list(start())
    job.close()  # idempotent
    job.cancel()  # no effect once closed


def test_exception_in_with_body_cancels(sandbox):
    with pytest.raises(RuntimeError):
        with fhirbulk.export(sandbox.url(SLOW), group="g1") as job:
            next(job.raw())
            status_url = first_status_url(job)
            raise RuntimeError("boom")
    assert job.cancelled
    assert sandbox.wait_for_delete(status_url)


def test_delete_on_cancel_false_keeps_the_server_job(sandbox):
    with fhirbulk.export(sandbox.url(SLOW), group="g1", delete_on_cancel=False) as job:
        next(job.raw())
        status_url = first_status_url(job)
    assert job.cancelled
    time.sleep(0.3)
    assert sandbox.deletes(status_url) == []


def test_completed_export_is_not_deleted(sandbox):
    with fhirbulk.export(sandbox.url(), group="g2", types=["Patient"]) as job:
        list(job.raw())
        status_url = first_status_url(job)
    assert not job.cancelled
    assert sandbox.deletes(status_url) == []


def test_abandoned_generator_frees_its_handle(sandbox):
    gc.collect()
    base = fhirbulk.live_handles()
    job = fhirbulk.export(sandbox.url(SLOW), group="g1")  # no `with`
    it = iter(job)
    next(it)
    status_url = first_status_url(job)
    ref = weakref.ref(job)
    del job  # now only the half-consumed iterator keeps the export alive
    assert ref() is not None and fhirbulk.live_handles() == base + 1
    del it
    gc.collect()
    assert ref() is None
    assert fhirbulk.live_handles() == base
    assert sandbox.wait_for_delete(status_url)


def test_abandoned_records_generator_frees_its_handle(sandbox):
    gc.collect()
    base = fhirbulk.live_handles()

    def first_five():
        for i, rec in enumerate(fhirbulk.export(sandbox.url(), group="g2").records()):
            if i == 4:
                return rec

    assert first_five().kind == "output"
    gc.collect()
    assert fhirbulk.live_handles() == base


def test_many_exports_do_not_leak_handles(sandbox):
    gc.collect()
    base = fhirbulk.live_handles()
    for _ in range(20):
        job = fhirbulk.export(sandbox.url(), group="g2", types=["Patient"])
        next(iter(job))
    del job
    gc.collect()
    assert fhirbulk.live_handles() == base


CHILD = textwrap.dedent(
    """
    import json, sys
    import fhirbulk
    with fhirbulk.export(sys.argv[1], group="g1") as job:
        for i, line in enumerate(job.raw()):
            if i == 0:
                print(json.dumps({"status_url": job.checkpoint()["status_url"]}), flush=True)
    print("finished", flush=True)
    """
)


def test_ctrl_c_cancels_and_deletes_the_job(sandbox, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), sandbox.url("polls=0;slow=1000")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        status_url = json.loads(line)["status_url"]
        time.sleep(0.3)  # the child is now blocked in a native pull
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err, err
    assert "finished" not in out
    assert proc.returncode != 0
    assert elapsed < 5, elapsed
    assert sandbox.wait_for_delete(status_url, timeout=5), "no DELETE of the job after Ctrl-C"


@pytest.mark.parametrize("form", ["raw", "parsed", "records"])
def test_close_in_the_loop_body_ends_the_loop(sandbox, form):
    # The rest of the pulled batch must not be handed out (nor read from the freed native
    # batch: records() reads the record views).
    base = fhirbulk.live_handles()
    with fhirbulk.export(sandbox.url(), group="g1", batch_size=50) as job:
        it = {"raw": job.raw, "parsed": job.__iter__, "records": job.records}[form]()
        seen = 0
        for _ in it:
            seen += 1
            job.close()
        assert seen == 1
        assert list(it) == [] and fhirbulk.live_handles() == base


def _threads() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_many_waiting_exports_share_the_engines_threads(sandbox):
    # Each waiting export once held 6 threads; now the exports of a process share a bounded set
    # (8 control + max_downloads + the timer + one control client's runtime).
    fhirbulk.set_max_downloads(4)
    with pytest.raises(ValueError):
        fhirbulk.set_max_downloads(-1)
    baseline = _threads()
    jobs = [
        fhirbulk.export(sandbox.url("polls=1000000;retry_after=600"), group="g1", types="Patient")
        for _ in range(60)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(j.progress.state == "waiting" and j.progress.polls >= 1 for j in jobs):
            assert time.monotonic() < deadline, "the exports did not all wait"
            time.sleep(0.05)
        assert _threads() <= baseline + 8 + 4 + 1 + 1, (_threads(), baseline)
        # A normal export still runs beside them, every record once.
        total = sum(sandbox.truth(level="group", group="g1", _type="Patient").values())
        with fhirbulk.export(sandbox.url(), group="g1", types="Patient") as job:
            assert sum(1 for _ in job.raw()) == total
    finally:
        for j in jobs:
            j.close()
        fhirbulk.set_max_downloads(0)
