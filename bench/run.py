#!/usr/bin/env python3
"""fhirbulk benchmark: one command, every figure side by side.

    python3 bench/run.py                 # full run: ~1 GB export, RSS at 1 GB and 4 GB
    python3 bench/run.py --smoke         # seconds: tiny sizes, debug build (CI runs this)

What it does, on this machine (the sandbox server runs here too, on 127.0.0.1):

1. builds the release library, the sandbox server and bench/consumer.c;
2. starts the sandbox with --prerender (files rendered once and served from memory with a
   Content-Length, so the server is not the bottleneck), kicks off a system-level export of
   about --gb GB of NDJSON in many files, and downloads every file once into a local
   directory (the local baselines read it; the page cache holds it);
3. measures, best of --runs where it says so:
   - curl: the same files with one `curl --parallel --parallel-max 4` to /dev/null (the
     baseline: fhirbulk also downloads 4 files at once); bytes/s, CPU s/GB; and, for scale,
     one curl process per file, 4 at a time (xargs -P4);
   - C: bench/consumer.c through the C ABI (export_next_batch; touches every byte): bytes/s,
     records/s, ratio to curl, CPU (user+sys, whole process) per GB, peak RSS; again with
     export_next_record (one call per record), with validate_json, and with chunked transfer
     encoding (a server that sends no Content-Length);
   - time from manifest to first record (the sandbox logs when it answered the status request
     with the manifest; the consumer notes when the first record arrived);
   - peak RSS of a deliberately slow C consumer (--slow-mbps) for two export sizes four times
     apart (fresh sandboxes, files rendered on the fly): memory must not grow with size;
   - peak RSS with long lines: 24 lines of --long-line-mb MB in one file, and one such line in
     each of 24 files (4 downloads at once); and a gzip-encoded export (the engine decodes);
   - Python (bench/python_bench.py) raw and parsed iteration next to plain Python reading the
     local files, and (bench/tables_bench.py) the export to typed Arrow batches and to Parquet
     next to pyarrow.json.read_json, read_json + write_table and DuckDB read_json_auto on the
     local files, each in its own process with its peak RSS; and Java (bench/java_bench.sh)
     iteration as String next to a pure-Java read of the local files (skipped with
     --skip-python / --skip-java or when not available).
   - many small files (--files, default 10,000, 50,000 and 200,000 one-record Patient files,
     each size on a fresh sandbox): files/s, client CPU ms per file and peak RSS of the C ABI
     (bench/consumer.c), the CLI (`fhirbulk export ... -o DIR`, to disk) and curl (`--parallel
     --parallel-max 4`, to /dev/null and to disk) over the same file URLs; the growth of CPU
     ms per file from the smallest to the largest size;
   - waiting exports (--waiting, default 1, 100 and 1,000): threads and RSS of one process
     (bench/waiting.c) holding that many exports that all wait for the server (202 with
     Retry-After: 600), then cancelled;
   - several exports at once (--multi, default 10): bench/multi.c downloads that many copies of
     the throughput export at the same time, one consumer thread each; aggregate MB/s next to
     one export alone, the most threads and the peak RSS.
   - the throughput export over HTTPS (the sandbox's TLS listener with its test CA): curl
     (`--cacert`) and the C consumer (`ca_bundle`), the ratio to curl over HTTPS.
4. prints a table and writes everything as JSON (--json, default target/bench/results.json).

   - attachments (--attachment-patients, default 3,000): the CLI exporting DocumentReference and
     DiagnosticReport with --attachments none, save and inline (each document fetched from the
     sandbox's Binary endpoint or its other origin), next to one `curl --parallel --parallel-max
     4` fetching the same documents (the retrievable ones) to /dev/null and to disk (a file
     each): documents/s, the ratio to curl, CPU and peak RSS.

--only PART,... runs some parts: throughput (3a-3c), tls, multi, rss (3d, 3e), files, waiting,
attachments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Sandbox system-level export, measured: 16,815 bytes a patient over 2,000 patients (~1.0 GB for
# 60k patients; 5,870 before issue 18 made the resources richer).
BYTES_PER_PATIENT = 16_820
CONCURRENCY = 4
PARTS = ("throughput", "tls", "multi", "rss", "files", "waiting", "parquet", "attachments")
# Keeps exports waiting (README, "The sandbox server"): "in progress" for a million polls, each
# 202 asking to come back in 600 s (the engine's default poll_max_ms allows that long a wait).
WAITING_SCENARIO = "polls=1000000;retry_after=600"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> None:
    log("+ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kw)


def run_child(cmd: list[str]) -> tuple[float, dict, bytes]:
    """Runs cmd to completion; wall seconds, its CPU time (wait4) and its stdout."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read()
        if p.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd[:3])} ... failed ({p.returncode}): "
                f"{err.read().decode(errors='replace')[-2000:]}"
            )
    # (ru_maxrss is not reported: it counts this Python process's image from before exec.)
    return wall, {"user_s": ru.ru_utime, "sys_s": ru.ru_stime}, text


def run_measured(measure: Path, cmd: list[str]) -> tuple[dict, bytes]:
    """Runs cmd under bench/measure.c: its wall seconds, CPU (user_s, sys_s), peak RSS
    (maxrss_kb, not inflated by this process's image) and stdout."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        _, _, out = run_child([str(measure), path, *cmd])
        return json.loads(Path(path).read_text()), out
    finally:
        os.unlink(path)


def parse_sizes(text: str) -> list[int]:
    sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text}")
    return sizes


class Sandbox:
    def __init__(self, binary: Path, patients: int, rpf: int, prerender: bool, tls: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-"))
        port_file = self.dir / "port"
        cmd = [str(binary), "--port", "0", "--port-file", str(port_file),
               "--patients", str(patients), "--records-per-file", str(rpf)]
        if prerender:
            cmd.append("--prerender")
        # HTTPS: the sandbox writes its test CA here (what clients trust).
        self.ca = self.dir / "tls" / "ca.pem" if tls else None
        if tls:
            cmd += ["--tls-dir", str(self.dir / "tls")]
        self.log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            if self.proc.poll() is not None:
                raise RuntimeError("sandbox exited: " + (self.dir / "log").read_text())
            time.sleep(0.05)
        else:
            raise RuntimeError("sandbox did not start")
        scheme = "https" if tls else "http"
        self.root = f"{scheme}://127.0.0.1:{port_file.read_text().strip()}"
        self.ssl = ssl.create_default_context(cafile=str(self.ca)) if tls else None

    def base(self, scenario: str = "polls=0") -> str:
        return f"{self.root}/x/{scenario}/fhir"

    def requests(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.root}/_sandbox/requests", context=self.ssl) as r:
            return json.load(r)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def kickoff(base: str, types: str | None = None, context=None) -> list[str]:
    """A plain system-level export: kick-off, poll, the manifest's output URLs."""
    query = f"?_type={types}" if types else ""
    req = urllib.request.Request(f"{base}/$export{query}", headers={
        "Accept": "application/fhir+json", "Prefer": "respond-async"})
    with urllib.request.urlopen(req, context=context) as r:
        status_url = r.headers["Content-Location"]
    while True:
        with urllib.request.urlopen(status_url, context=context) as r:
            if r.status == 200:
                manifest = json.load(r)
                return [o["url"] for o in manifest["output"]]
        time.sleep(0.05)


def curl_config(urls: list[str], out_dir: Path | None) -> Path:
    fd, path = tempfile.mkstemp(suffix=".curlrc")
    with os.fdopen(fd, "w") as f:
        for i, u in enumerate(urls):
            f.write(f'url = "{u}"\n')
            target = "/dev/null" if out_dir is None else str(out_dir / f"{i:06d}.ndjson")
            f.write(f'output = "{target}"\n')
    return Path(path)


def curl_cmd(cfg: Path, cacert: Path | None = None) -> list[str]:
    return ["curl", "--silent", "--show-error", "--no-progress-meter", "--fail", "--parallel",
            "--parallel-max", str(CONCURRENCY), "--config", str(cfg),
            *(["--cacert", str(cacert)] if cacert else [])]


def best(results: list[dict], key: str = "seconds") -> dict:
    return min(results, key=lambda r: r[key])


def c_row(name: str, r: dict, baseline_bps: float | None) -> dict:
    gb = r["bytes"] / 1e9
    row = {
        "name": name,
        "bytes": r["bytes"],
        "records": r["records"],
        "seconds": r["seconds"],
        "bytes_per_s": r["bytes"] / r["seconds"],
        "records_per_s": r["records"] / r["seconds"],
        "cpu_s_per_gb": (r["user_s"] + r["sys_s"]) / gb if gb else None,
        "maxrss_mb": r["maxrss_kb"] / 1024,
    }
    if baseline_bps:
        row["ratio_to_curl"] = row["bytes_per_s"] / baseline_bps
    return row


def consumer_run(consumer: Path, base: str, *args: str) -> dict:
    _, _, out = run_child([str(consumer), base, "--concurrency", str(CONCURRENCY), *args])
    return json.loads(out)


def first_record_ms(sb: Sandbox, r: dict) -> float | None:
    """Manifest to first record: the last status request (answered with the manifest) before
    the first record, from the sandbox's log."""
    first = r["first_record_unix_us"]
    status = [q["unix_us"] for q in sb.requests()
              if q["method"] == "GET" and "/jobs/" in q["path"] and q["unix_us"] <= first]
    return (first - max(status)) / 1000 if status else None


def fmt_rate(bps: float) -> str:
    return f"{bps / 1e6:,.0f} MB/s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="size of the throughput export (GB)")
    ap.add_argument("--rss-gb", type=float, nargs=2, default=(1.0, 4.0), metavar=("SMALL", "LARGE"),
                    help="sizes of the two slow-consumer exports (GB)")
    ap.add_argument("--slow-mbps", type=float, default=150, help="pace of the slow consumer (MB/s)")
    ap.add_argument("--runs", type=int, default=3, help="best of N for the throughput rows")
    ap.add_argument("--records-per-file", type=int, default=20000)
    ap.add_argument("--long-line-mb", type=float, default=40, help="size of the long lines (MB)")
    ap.add_argument("--files", type=parse_sizes, default=[10_000, 50_000, 200_000],
                    metavar="N,N,...", help="sizes of the many-files rows (one-record files)")
    ap.add_argument("--waiting", type=parse_sizes, default=[1, 100, 1_000], metavar="N,N,...",
                    help="numbers of waiting exports held by one process")
    ap.add_argument("--multi", type=int, default=10, metavar="N",
                    help="exports downloading at once in one process")
    ap.add_argument("--attachment-patients", type=int, default=3000,
                    help="patients of the attachments part's export")
    ap.add_argument("--only", metavar="PART,...", help="run only these parts: "
                    f"{', '.join(PARTS)} (default: all)")
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds: 10 MB, RSS at 5 and 20 MB, one run, 500 small files, "
                    "1 and 10 waiting exports, 3 at once; debug build")
    ap.add_argument("--debug", action="store_true", help="use the debug build (target/debug)")
    ap.add_argument("--skip-python", action="store_true")
    ap.add_argument("--skip-java", action="store_true")
    ap.add_argument("--python", help="interpreter with fhirbulk installed (default: build a venv "
                    "in target/bench/venv with pip install ./bindings/python)")
    ap.add_argument("--json", type=Path, help="where to write the results "
                    "(default target/bench/results.json)")
    a = ap.parse_args()
    if a.smoke:
        a.gb, a.rss_gb, a.runs, a.debug = 0.01, (0.005, 0.02), 1, True
        a.slow_mbps, a.records_per_file, a.long_line_mb = 20, 1000, 1
        a.files, a.waiting, a.multi = [500], [1, 10], 3
        a.attachment_patients = 40
    parts = set(PARTS)
    if a.only:
        parts = {x.strip() for x in a.only.split(",") if x.strip()}
        if parts - set(PARTS):
            ap.error(f"--only: unknown part(s) {', '.join(sorted(parts - set(PARTS)))}; "
                     f"parts are {', '.join(PARTS)}")

    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    profile = "debug" if a.debug else "release"
    out_dir = target / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = a.json or out_dir / ("smoke.json" if a.smoke else "results.json")

    # 1. build (the library, the sandbox server, the CLI; the C programs of bench/)
    cargo = ["cargo", "build", "--features", "sandbox,cli,arrow", "--lib", "--bin", "fhirbulk-sandbox",
             "--bin", "fhirbulk"]
    run(cargo + ([] if a.debug else ["--release"]), cwd=REPO)
    libdir = target / profile
    programs = {}
    for name in ("consumer", "waiting", "multi", "measure"):
        programs[name] = out_dir / f"{name}-{profile}"
        # bench/measure.c runs other programs: no library of its own.
        lib = [] if name == "measure" else [f"-L{libdir}", "-lfhirbulk", "-lpthread",
                                            f"-Wl,-rpath,{libdir}"]
        run(["cc", "-std=c11", "-O3", "-Wall", "-Wextra", "-Werror", f"-I{REPO / 'include'}",
             "-o", str(programs[name]), str(REPO / "bench" / f"{name}.c"), *lib])
    consumer = programs["consumer"]
    sandbox_bin = libdir / "fhirbulk-sandbox"

    results: dict = {"machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
                     "config": {"gb": a.gb, "rss_gb": list(a.rss_gb), "runs": a.runs,
                                "slow_mbps": a.slow_mbps, "concurrency": CONCURRENCY,
                                "profile": profile, "files": a.files, "waiting": a.waiting,
                                "multi": a.multi, "parts": sorted(parts)}}
    rows: list[dict] = []
    results["rows"] = rows

    if parts & {"throughput", "multi", "parquet"}:
        throughput_part(a, parts, results, rows, sandbox_bin, programs, out_dir)
    if "tls" in parts:
        results["tls"] = tls_part(a, rows, sandbox_bin, consumer)
    if "rss" in parts:
        rss_part(a, results, sandbox_bin, consumer)
    if "files" in parts:
        results["many_files"] = [files_part(n, sandbox_bin, programs, libdir / "fhirbulk")
                                 for n in a.files]
    if "waiting" in parts:
        results["waiting"] = waiting_part(a.waiting, sandbox_bin, programs)
    if "attachments" in parts:
        results["attachments"] = attachments_part(a, sandbox_bin, programs, libdir / "fhirbulk")

    print_table(results)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {json_path}")
    return 0


def throughput_part(a, parts: set[str], results: dict, rows: list[dict], sandbox_bin: Path,
                    programs: dict, out_dir: Path) -> None:
    consumer = programs["consumer"]
    # 2. the export, pre-rendered; the files once on local disk
    patients = max(10, int(a.gb * 1e9 / BYTES_PER_PATIENT))
    sb = Sandbox(sandbox_bin, patients, a.records_per_file, prerender=True)
    local = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-files-"))
    try:
        base = sb.base()
        t = time.perf_counter()
        urls = kickoff(base)
        cfg = curl_config(urls, local)
        run(curl_cmd(cfg))
        cfg.unlink()
        total = sum(p.stat().st_size for p in local.iterdir())
        records = sum(p.read_bytes().count(b"\n") for p in local.iterdir())
        log(f"export: {len(urls)} files, {total / 1e9:.2f} GB, {records:,} records "
            f"(rendered in {time.perf_counter() - t:.1f} s)")
        results["export"] = {"files": len(urls), "bytes": total, "records": records,
                             "patients": patients}

        if "throughput" in parts:
            # 3a. curl baseline
            cfg = curl_config(urls, None)
            curl_runs = []
            for _ in range(a.runs):
                wall, ru, _ = run_child(curl_cmd(cfg))
                curl_runs.append({"seconds": wall, "bytes": total, "records": records, **ru})
            cb = best(curl_runs)
            # The same with one curl process per file, 4 at a time (what `xargs -P4 curl` does).
            xargs = ["bash", "-c", "sed -n 's/^url = \"\\(.*\\)\"$/\\1/p' \"$0\" | "
                     f"xargs -P {CONCURRENCY} -n 1 curl --silent --fail -o /dev/null", str(cfg)]
            wall, ru, _ = run_child(xargs)
            cfg.unlink()
            curl_bps = total / cb["seconds"]
            rows.append({"name": f"curl x{CONCURRENCY} (baseline)", "bytes": total,
                         "records": records, "seconds": cb["seconds"], "bytes_per_s": curl_bps,
                         "records_per_s": records / cb["seconds"],
                         "cpu_s_per_gb": (cb["user_s"] + cb["sys_s"]) / (total / 1e9),
                         "maxrss_mb": None, "ratio_to_curl": 1.0})
            rows.append({"name": f"curl, {CONCURRENCY} processes (xargs)", "bytes": total,
                         "records": records, "seconds": wall, "bytes_per_s": total / wall,
                         "records_per_s": records / wall,
                         "cpu_s_per_gb": (ru["user_s"] + ru["sys_s"]) / (total / 1e9),
                         "maxrss_mb": None, "ratio_to_curl": total / wall / curl_bps})

            # 3b. the C consumer
            def check(r: dict) -> dict:
                if r["records"] != records or r["bytes"] != total:
                    raise RuntimeError(f"consumer delivered {r['records']} records / {r['bytes']} "
                                       f"bytes; the export has {records} / {total}")
                return r

            c_runs = [check(consumer_run(consumer, base)) for _ in range(a.runs)]
            cbest = best(c_runs)
            rows.append(c_row("fhirbulk C, export_next_batch", cbest, curl_bps))
            latencies = [x for x in (first_record_ms(sb, r) for r in c_runs) if x is not None]
            results["first_record_ms"] = {"min": min(latencies), "max": max(latencies),
                                          "runs": latencies} if latencies else None
            rows.append(c_row("fhirbulk C, export_next_record",
                              check(consumer_run(consumer, base, "--api", "record")), curl_bps))
            rows.append(c_row("fhirbulk C, validate_json",
                              check(consumer_run(consumer, base, "--validate")), curl_bps))
            # Typed Arrow batches (the FHIR R4 schema, the remainder column), decoded in the
            # engine: bytes are the NDJSON they came from.
            rows.append(c_row("fhirbulk C, Arrow batches",
                              check(consumer_run(consumer, base, "--api", "arrow")), curl_bps))
            # A server without Content-Length (chunked transfer encoding, 8 KB chunks) and its own
            # curl baseline.
            urls_c = kickoff(sb.base("polls=0;chunked"))
            cfg = curl_config(urls_c, None)
            wall, ru, _ = run_child(curl_cmd(cfg))
            cfg.unlink()
            cc = {"seconds": wall, **ru}
            rc = check(consumer_run(consumer, sb.base("polls=0;chunked")))
            results["chunked"] = {
                "curl_seconds": cc["seconds"],
                "curl_cpu_s_per_gb": (cc["user_s"] + cc["sys_s"]) / (total / 1e9),
                "fhirbulk": c_row("fhirbulk C, chunked", rc, total / cc["seconds"])}
            rows.append(results["chunked"]["fhirbulk"])
            # Content-Encoding: gzip, decoded by the engine (the sandbox compresses on the fly, on
            # the same cores: a lower bound).
            rows.append(c_row("fhirbulk C, gzip (decoded)",
                              check(consumer_run(consumer, sb.base("polls=0;gzip"))), curl_bps))

            # 3c. Python and Java, against the same pre-rendered export and local files
            if not a.skip_python:
                results["python"] = python_part(a, base, local, out_dir)
            if not a.skip_java:
                results["java"] = java_part(a, base, local)
        if "multi" in parts and a.multi > 0:
            results["multi"] = multi_part(a, programs, base, records, total)
        if "parquet" in parts:
            results["parquet"] = parquet_part(a, programs, sandbox_bin, libdir_of(sandbox_bin),
                                              base, local, records)
    finally:
        sb.stop()
        shutil.rmtree(local, ignore_errors=True)


def tls_part(a, rows: list[dict], sandbox_bin: Path, consumer: Path) -> dict:
    """The throughput export over HTTPS (the sandbox's TLS listener, TLS 1.3, its test CA):
    curl with --cacert and the C consumer with ca_bundle, best of --runs each; the ratio is to
    curl over HTTPS."""
    patients = max(10, int(a.gb * 1e9 / BYTES_PER_PATIENT))
    sb = Sandbox(sandbox_bin, patients, a.records_per_file, prerender=True, tls=True)
    try:
        base = sb.base()
        urls = kickoff(base, context=sb.ssl)
        # Render every file once (pre-rendered from then on), and count what curl must move.
        local = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-tls-"))
        cfg = curl_config(urls, local)
        run(curl_cmd(cfg, sb.ca))
        cfg.unlink()
        total = sum(p.stat().st_size for p in local.iterdir())
        records = sum(p.read_bytes().count(b"\n") for p in local.iterdir())
        shutil.rmtree(local, ignore_errors=True)
        cfg = curl_config(urls, None)
        curl_runs = []
        for _ in range(a.runs):
            wall, ru, _ = run_child(curl_cmd(cfg, sb.ca))
            curl_runs.append({"seconds": wall, **ru})
        cfg.unlink()
        cb = best(curl_runs)
        curl_bps = total / cb["seconds"]
        rows.append({"name": f"curl x{CONCURRENCY}, HTTPS (baseline)", "bytes": total,
                     "records": records, "seconds": cb["seconds"], "bytes_per_s": curl_bps,
                     "records_per_s": records / cb["seconds"],
                     "cpu_s_per_gb": (cb["user_s"] + cb["sys_s"]) / (total / 1e9),
                     "maxrss_mb": None, "ratio_to_curl": 1.0})
        runs = []
        for _ in range(a.runs):
            r = consumer_run(consumer, base, "--ca-bundle", str(sb.ca))
            if r["records"] != records or r["bytes"] != total:
                raise RuntimeError(f"consumer over HTTPS delivered {r['records']} records / "
                                   f"{r['bytes']} bytes; the export has {records} / {total}")
            runs.append(r)
        row = c_row("fhirbulk C, HTTPS", best(runs), curl_bps)
        rows.append(row)
        return {"bytes": total, "records": records, "curl_bytes_per_s": curl_bps, "fhirbulk": row}
    finally:
        sb.stop()


def rss_part(a, results: dict, sandbox_bin: Path, consumer: Path) -> None:
    # 3d. memory: a slow consumer, two sizes four times apart, files rendered on the fly
    rss = []
    for gb in a.rss_gb:
        s = Sandbox(sandbox_bin, max(10, int(gb * 1e9 / BYTES_PER_PATIENT)), a.records_per_file,
                    prerender=False)
        try:
            r = consumer_run(consumer, s.base(), "--slow-mbps", str(a.slow_mbps))
        finally:
            s.stop()
        rss.append({"gb": r["bytes"] / 1e9, "records": r["records"], "seconds": r["seconds"],
                    "maxrss_mb": r["maxrss_kb"] / 1024})
        log(f"slow consumer, {r['bytes'] / 1e9:.2f} GB: peak RSS {r['maxrss_kb'] / 1024:.1f} MB")
    results["rss_slow_consumer"] = rss

    # 3e. memory with long lines (files rendered on the fly)
    long_bytes = int(a.long_line_mb * 1e6)
    long_rows = []
    for name, patients, rpf, scenario in [
        ("24 long lines in one file", 30, 1000, f"polls=0;long_line={long_bytes}:24"),
        ("one long line in each of 24 files", 240, 10, f"polls=0;long_line={long_bytes}"),
    ]:
        s = Sandbox(sandbox_bin, patients, rpf, prerender=False)
        try:
            r = consumer_run(consumer, s.base(scenario), "--type", "Patient")
        finally:
            s.stop()
        long_rows.append({"name": name, "line_mb": a.long_line_mb, "records": r["records"],
                          "gb": r["bytes"] / 1e9, "seconds": r["seconds"],
                          "maxrss_mb": r["maxrss_kb"] / 1024})
        log(f"long lines, {name}: peak RSS {r['maxrss_kb'] / 1024:.1f} MB")
    results["rss_long_lines"] = long_rows


def libdir_of(sandbox_bin: Path) -> Path:
    return sandbox_bin.parent


def parquet_part(a, programs: dict, sandbox_bin: Path, libdir: Path, base: str, local: Path,
                 records: int) -> dict:
    """Export -> Parquet dataset on disk: `fhirbulk export --format parquet` against the
    two-step route (`--format ndjson`, then pyarrow read_json + write_table or DuckDB COPY over
    the files, each measured on its own: run them with a Python that has pyarrow/duckdb); then
    the CLI's peak RSS for a.rss_gb exports (rendered on the fly)."""
    cli = libdir / "fhirbulk"
    work = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-parquet-"))
    res: dict = {}

    def export(fmt: str, url: str, *extra: str) -> dict:
        out = work / fmt
        shutil.rmtree(out, ignore_errors=True)
        m, stdout = run_measured(programs["measure"], [
            str(cli), "export", "--base-url", url, "--out", str(out), "--format", fmt, "-q",
            "--json", *extra])
        summary = json.loads(stdout)
        got = sum(summary["records"].values())
        disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        shutil.rmtree(out, ignore_errors=True)
        return {"seconds": m["seconds"], "cpu_s": m["user_s"] + m["sys_s"],
                "maxrss_mb": m["maxrss_kb"] / 1024, "records": got, "disk_bytes": disk}

    try:
        for fmt in ("ndjson", "parquet"):
            r = best([export(fmt, base) for _ in range(a.runs)])
            if r["records"] != records:
                raise RuntimeError(f"--format {fmt} wrote {r['records']} records of {records}")
            res[f"cli_{fmt}"] = r
            log(f"fhirbulk export --format {fmt}: {r['seconds']:.2f} s, "
                f"{r['cpu_s']:.1f} CPU s, {r['maxrss_mb']:.0f} MB, {r['disk_bytes'] / 1e6:.0f} MB")
        # The second step of the two-step route, on the files of the same export.
        py = a.python or os.environ.get("FHIRBULK_BENCH_PYTHON") or sys.executable
        venv = libdir.parent / "bench" / "venv" / "bin" / "python"
        if not a.python and venv.exists():
            py = str(venv)
        for route in ("pyarrow_parquet", "duckdb_parquet"):
            p = subprocess.run([py, str(REPO / "bench" / "tables_bench.py"), "--base", base,
                                "--local", str(local), "--only", route],
                               capture_output=True, text=True)
            if p.returncode == 0 and p.stdout.strip():
                r = json.loads(p.stdout.strip().splitlines()[-1]).get(route)
                if r:
                    res[route] = r
                    log(f"{route} (local files): {r['seconds']:.2f} s, {r['maxrss_mb']:.0f} MB")
        rss = []
        for gb in a.rss_gb:
            s = Sandbox(sandbox_bin, max(10, int(gb * 1e9 / BYTES_PER_PATIENT)),
                        a.records_per_file, prerender=False)
            try:
                r = export("parquet", s.base())
            finally:
                s.stop()
            rss.append({"gb": gb, **r})
            log(f"--format parquet, {gb:.2f} GB export: peak RSS {r['maxrss_mb']:.0f} MB")
        res["rss"] = rss
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def print_parquet(res: dict) -> None:
    pq = res["parquet"]
    print("\nExport -> Parquet dataset on disk (this export; two-step = --format ndjson, then "
          "the local conversion):")
    nd, cli = pq.get("cli_ndjson"), pq.get("cli_parquet")
    if cli:
        print(f"  fhirbulk export --format parquet  {cli['seconds']:7.2f} s  "
              f"{cli['cpu_s']:6.1f} CPU s  {cli['maxrss_mb']:6.0f} MB  "
              f"{cli['disk_bytes'] / 1e6:7.0f} MB on disk")
    if nd:
        print(f"  fhirbulk export --format ndjson   {nd['seconds']:7.2f} s  "
              f"{nd['cpu_s']:6.1f} CPU s  {nd['maxrss_mb']:6.0f} MB  "
              f"{nd['disk_bytes'] / 1e6:7.0f} MB on disk")
        for route in ("pyarrow_parquet", "duckdb_parquet"):
            r = pq.get(route)
            if r:
                total = nd["seconds"] + r["seconds"]
                ratio = f"; --format parquet takes {cli['seconds'] / total:.2f}x this" if cli else ""
                failed = r.get("failed_files") or []
                note = f", {len(failed)} files it could not write" if failed else ""
                print(f"  two-step, then {route:17} {total:7.2f} s  ({r['seconds']:.2f} s "
                      f"convert, {r['maxrss_mb']:.0f} MB, {r['rows']:,} rows{note}{ratio})")
    for r in pq.get("rss", []):
        print(f"  --format parquet, {r['gb']:.2f} GB export (rendered on the fly): peak RSS "
              f"{r['maxrss_mb']:.0f} MB, {r['seconds']:.1f} s")


def multi_part(a, programs: dict, base: str, records: int, total: int) -> dict:
    """One export alone, then a.multi at once, each consumed on its own thread (bench/multi.c);
    best of a.runs each."""
    def once(n: int) -> dict:
        m, out = run_measured(programs["measure"], [
            str(programs["multi"]), base, "--exports", str(n),
            "--concurrency", str(CONCURRENCY)])
        r = json.loads(out)
        for i, e in enumerate(r["per_export"]):
            if e["records"] != records or e["bytes"] != total:
                raise RuntimeError(f"{n} exports at once: export #{i} delivered {e['records']} "
                                   f"records / {e['bytes']} bytes; the export has {records} / "
                                   f"{total}")
        if len(r["per_export"]) != n:
            raise RuntimeError(f"{n} exports at once: {len(r['per_export'])} reported")
        gb = r["bytes"] / 1e9
        row = {"exports": n, "records": r["records"], "bytes": r["bytes"],
               "seconds": r["seconds"], "bytes_per_s": r["bytes"] / r["seconds"],
               "cpu_s_per_gb": (m["user_s"] + m["sys_s"]) / gb,
               "peak_threads": r["peak_threads"], "maxrss_mb": r["maxrss_kb"] / 1024,
               "slowest_export_s": max(e["seconds"] for e in r["per_export"])}
        log(f"{n} export(s) at once: {row['bytes_per_s'] / 1e6:,.0f} MB/s, "
            f"{row['peak_threads']} threads, peak RSS {row['maxrss_mb']:.1f} MB")
        return row

    single = best([once(1) for _ in range(a.runs)])
    many = best([once(a.multi) for _ in range(a.runs)])
    return {"single": single, "concurrent": many,
            "ratio": many["bytes_per_s"] / single["bytes_per_s"]}


def files_part(n: int, sandbox_bin: Path, programs: dict, cli: Path) -> dict:
    """N one-record Patient files on a fresh sandbox: curl to disk (the reference: file, record
    and byte counts), curl to /dev/null, the C ABI and the CLI over the same export."""
    sb = Sandbox(sandbox_bin, n, 1, prerender=True)
    work = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-many-"))
    cfgs: list[Path] = []
    try:
        base = sb.base()
        urls = kickoff(base, "Patient")
        if len(urls) != n:
            raise RuntimeError(f"{n} patients, one per file: the manifest lists {len(urls)} files")
        null_cfg = curl_config(urls, None)
        cfgs.append(null_cfg)
        # Warm-up (not measured): the sandbox renders each file once and keeps it.
        t = time.perf_counter()
        run_child(curl_cmd(null_cfg))
        log(f"{n:,} files: rendered in {time.perf_counter() - t:.1f} s")
        rows = []

        def row(name: str, m: dict, **extra) -> dict:
            cpu = m["user_s"] + m["sys_s"]
            r = {"name": name, "seconds": m["seconds"], "files_per_s": n / m["seconds"],
                 "cpu_ms_per_file": cpu * 1000 / n, "user_s": m["user_s"], "sys_s": m["sys_s"],
                 "maxrss_mb": m["maxrss_kb"] / 1024, **extra}
            log(f"{n:,} files, {name}: {r['files_per_s']:,.0f} files/s, "
                f"{r['cpu_ms_per_file']:.3f} CPU ms/file, peak RSS {r['maxrss_mb']:.1f} MB")
            rows.append(r)
            return r

        # curl to disk: what the export holds
        disk = work / "curl"
        disk.mkdir()
        disk_cfg = curl_config(urls, disk)
        cfgs.append(disk_cfg)
        m, _ = run_measured(programs["measure"], curl_cmd(disk_cfg))
        got = sorted(disk.iterdir())
        total = sum(f.stat().st_size for f in got)
        records = sum(f.read_bytes().count(b"\n") for f in got)
        if len(got) != n or records != n:
            raise RuntimeError(f"curl wrote {len(got)} files with {records} records; "
                               f"expected {n} files of one record")
        row("curl, to disk", m)
        shutil.rmtree(disk)

        # curl to /dev/null: one status code per transfer, all 200
        write_out = ["--write-out", "%{http_code} %{size_download}\n"]
        m, out = run_measured(programs["measure"], curl_cmd(null_cfg) + write_out)
        answers = [line.split() for line in out.decode().splitlines() if line.strip()]
        ok = sum(1 for code, _ in answers if code == "200")
        size = sum(int(b) for _, b in answers)
        if ok != n or size != total:
            raise RuntimeError(f"curl to /dev/null: {ok} answers 200 of {len(answers)}, "
                               f"{size} bytes; expected {n} and {total}")
        row("curl, to /dev/null", m)

        # the C ABI (bench/consumer.c; touches every byte, writes nothing)
        m, out = run_measured(programs["measure"], [
            str(programs["consumer"]), base, "--concurrency", str(CONCURRENCY),
            "--type", "Patient"])
        r = json.loads(out)
        if r["records"] != n or r["bytes"] != total:
            raise RuntimeError(f"C ABI: {r['records']} records / {r['bytes']} bytes; expected "
                               f"{n} / {total}")
        row("fhirbulk C ABI", m)

        # the CLI, to disk
        out_dir = work / "cli"
        m, _ = run_measured(programs["measure"], [
            str(cli), "export", "-u", base, "--type", "Patient", "-o", str(out_dir), "--quiet"])
        got = sorted(out_dir.glob("Patient.*.ndjson"))
        cli_bytes = sum(f.stat().st_size for f in got)
        cli_records = sum(f.read_bytes().count(b"\n") for f in got)
        if len(got) != n or cli_records != n or cli_bytes != total:
            raise RuntimeError(f"CLI wrote {len(got)} files, {cli_records} records, {cli_bytes} "
                               f"bytes; expected {n}, {n}, {total}")
        row("fhirbulk CLI, to disk", m)
        shutil.rmtree(out_dir)
        return {"files": n, "records": n, "bytes": total, "rows": rows}
    finally:
        sb.stop()
        for c in cfgs:
            c.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def waiting_part(sizes: list[int], sandbox_bin: Path, programs: dict) -> list[dict]:
    """Threads and RSS of one process holding N exports that all wait (bench/waiting.c), one
    fresh process per N, one sandbox for all."""
    sb = Sandbox(sandbox_bin, 10, 1000, prerender=False)
    rows = []
    try:
        for n in sizes:
            _, _, out = run_child([str(programs["waiting"]), sb.base(WAITING_SCENARIO),
                                "--exports", str(n), "--timeout-s", str(120 + n // 5)])
            r = json.loads(out)
            if r["waiting"] != n:
                raise RuntimeError(f"{n} waiting exports: only {r['waiting']} waited")
            w = r["waiting_sample"]
            row = {"exports": n, "threads": w["threads"], "rss_mb": w["rss_kb"] / 1024,
                   "hwm_mb": w["hwm_kb"] / 1024, "rss_kb": w["rss_kb"],
                   "before": r["before"], "after_free": r["after_free"],
                   "start_s": r["start_s"], "all_waiting_s": r["all_waiting_s"],
                   "cancel_s": r["cancel_s"], "free_s": r["free_s"]}
            log(f"{n:,} waiting exports: {row['threads']} threads, RSS {row['rss_mb']:.1f} MB "
                f"(started in {row['start_s']:.2f} s, freed in {row['free_s']:.2f} s)")
            rows.append(row)
    finally:
        sb.stop()
    one = next((r for r in rows if r["exports"] == 1), None)
    for r in rows:
        if one and r["exports"] > 1:
            r["kb_per_export"] = (r["rss_kb"] - one["rss_kb"]) / (r["exports"] - 1)
            r["threads_per_export"] = (r["threads"] - one["threads"]) / (r["exports"] - 1)
    return rows


def attachments_part(a, sandbox_bin: Path, programs: dict, cli: Path) -> dict:
    """The CLI exporting DocumentReference and DiagnosticReport with --attachments none, save
    and inline (best of --runs each, a fresh output directory each), and curl fetching the same
    documents."""
    types = "DocumentReference,DiagnosticReport"
    sb = Sandbox(sandbox_bin, a.attachment_patients, 2000, prerender=True)
    try:
        query = f"level=system&_type={types}&attachments=1"
        with urllib.request.urlopen(f"{sb.root}/_sandbox/truth?{query}") as r:
            truth = json.load(r)
        ok = [t for t in truth if t["outcome"] in ("ok", "large")]
        docs_bytes = sum(t["size"] for t in ok)
        base = sb.base()
        urls = [t["url"] if t["url"].startswith("http") else f"{base}/{t['url']}" for t in ok]
        cfg = curl_config(urls, None)
        curl = []
        for _ in range(a.runs):
            # The sandbox answers some documents 503 once (Retry-After: 0): curl retries them too.
            r, _ = run_measured(programs["measure"],
                                curl_cmd(cfg) + ["--retry", "3", "--retry-delay", "0"])
            curl.append(r)
        cfg.unlink()
        # The same to disk, a file each (what --attachments save does besides the records).
        to_disk = []
        for _ in range(a.runs):
            d = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-att-curl-"))
            try:
                cfg = curl_config(urls, d)
                r, _ = run_measured(programs["measure"],
                                    curl_cmd(cfg) + ["--retry", "3", "--retry-delay", "0"])
                cfg.unlink()
                to_disk.append(r)
            finally:
                shutil.rmtree(d, ignore_errors=True)
        c = best(curl, "seconds")
        cd = best(to_disk, "seconds")
        out = {"patients": a.attachment_patients, "documents": len(ok), "bytes": docs_bytes,
               "attachments": len(truth), "curl": {"seconds": c["seconds"],
                                                   "documents_per_s": len(ok) / c["seconds"],
                                                   "cpu_s": c["user_s"] + c["sys_s"]},
               "curl_to_disk": {"seconds": cd["seconds"],
                                "documents_per_s": len(ok) / cd["seconds"],
                                "cpu_s": cd["user_s"] + cd["sys_s"]},
               "modes": {}}
        log(f"attachments: {len(ok):,} documents ({docs_bytes / 1e6:,.1f} MB) of {len(truth):,} "
            f"attachments; curl {c['seconds']:.2f} s")
        for mode in ("none", "save", "inline"):
            runs = []
            for _ in range(a.runs):
                d = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-att-"))
                try:
                    cmd = [str(cli), "export", "--base-url", base, "--system", "-t", types,
                           "--out", str(d / "out"), "-q", "--poll-min-ms", "10",
                           "--attachments", mode, "--attachment-max-bytes", str(2 << 20),
                           "--retry-max-attempts", "2", "--retry-backoff-min-ms", "10",
                           "--retry-backoff-max-ms", "20", "--concurrency", str(CONCURRENCY)]
                    r, _ = run_measured(programs["measure"], cmd)
                    if r.get("exit"):
                        raise RuntimeError(f"fhirbulk --attachments {mode} exited {r['exit']}")
                    runs.append(r)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
            r = best(runs, "seconds")
            row = {"seconds": r["seconds"], "cpu_s": r["user_s"] + r["sys_s"],
                   "maxrss_mb": r["maxrss_kb"] / 1024}
            if mode != "none":
                row["documents_per_s"] = len(ok) / r["seconds"]
                row["ratio_to_curl"] = c["seconds"] / r["seconds"]
                row["ratio_to_curl_to_disk"] = cd["seconds"] / r["seconds"]
            out["modes"][mode] = row
            log(f"attachments {mode}: {r['seconds']:.2f} s, peak RSS {row['maxrss_mb']:.1f} MB")
        return out
    finally:
        sb.stop()


def print_attachments(r: dict) -> None:
    print(f"\nAttachments: {r['patients']:,} patients, DocumentReference + DiagnosticReport, "
          f"{r['documents']:,} documents ({r['bytes'] / 1e6:,.1f} MB) of {r['attachments']:,} "
          f"attachments; CLI to disk, {CONCURRENCY} at once:")
    print(f"| {'':30} | {'seconds':>8} | {'docs/s':>8} | {'x curl':>6} | {'CPU s':>6} | "
          f"{'peak RSS':>8} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 10}|")
    c = r["curl"]
    print(f"| {'curl, the documents only':30} | {c['seconds']:8.2f} | {c['documents_per_s']:8,.0f} "
          f"| {1:6.2f} | {c['cpu_s']:6.2f} | {'-':>8} |")
    cd = r["curl_to_disk"]
    print(f"| {'curl, the documents to disk':30} | {cd['seconds']:8.2f} | "
          f"{cd['documents_per_s']:8,.0f} | {c['seconds'] / cd['seconds']:6.2f} | "
          f"{cd['cpu_s']:6.2f} | {'-':>8} |")
    for mode, m in r["modes"].items():
        label = f"fhirbulk --attachments {mode}"
        dps = f"{m['documents_per_s']:8,.0f}" if "documents_per_s" in m else f"{'-':>8}"
        ratio = f"{m['ratio_to_curl']:6.2f}" if "ratio_to_curl" in m else f"{'-':>6}"
        print(f"| {label:30} | {m['seconds']:8.2f} | {dps} | {ratio} | {m['cpu_s']:6.2f} | "
              f"{m['maxrss_mb']:6.1f} MB |")


def python_part(a, base: str, local: Path, out_dir: Path) -> dict | None:
    script = REPO / "bench" / "python_bench.py"
    if not script.exists():
        log("bench/python_bench.py missing: Python skipped")
        return None
    py = a.python or os.environ.get("FHIRBULK_BENCH_PYTHON")
    if not py:
        venv = out_dir / "venv"
        if not (venv / "bin" / "python").exists():
            run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", str(REPO / "bindings" / "python")])
        py = str(venv / "bin" / "python")
        # The tables part's other routes (optional: skipped when they do not install).
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "pyarrow", "duckdb"], check=False, timeout=600)
    _, _, out = run_child([py, str(script), "--base", base, "--local", str(local),
                           "--runs", str(a.runs)])
    res = json.loads(out)
    # From the export to typed tables: fhirbulk's Arrow and Parquet next to pyarrow's and
    # DuckDB's routes from the local files (bench/tables_bench.py).
    tables = REPO / "bench" / "tables_bench.py"
    p = subprocess.run([py, str(tables), "--base", base, "--local", str(local)],
                       capture_output=True, text=True)
    sys.stderr.write(p.stderr)
    if p.returncode == 0 and p.stdout.strip():
        res["tables"] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


def java_part(a, base: str, local: Path) -> dict | None:
    script = REPO / "bench" / "java_bench.sh"
    if not script.exists() or not shutil.which("java") or not shutil.which("mvn"):
        log("bench/java_bench.sh, java or mvn missing: Java skipped")
        return None
    _, _, out = run_child(["bash", str(script), "--base", base, "--local", str(local),
                           "--runs", str(a.runs)])
    return json.loads(out)


def print_table(res: dict) -> None:
    e = res.get("export")
    print(f"\n{res['machine']['cpus']} CPUs, sandbox on the same machine, "
          f"{res['config']['profile']} build")
    if e:
        print(f"Export: {e['files']} files, {e['bytes'] / 1e9:.2f} GB, {e['records']:,} records")
    if res["rows"]:
        print_throughput(res)
    print_memory(res)
    if res.get("multi"):
        print_multi(res)
    if res.get("many_files"):
        print_many_files(res)
    if res.get("waiting"):
        print_waiting(res)
    if res.get("parquet"):
        print_parquet(res)
    if res.get("attachments"):
        print_attachments(res["attachments"])


def print_throughput(res: dict) -> None:
    e = res.get("export") or res.get("tls")
    print()
    print(f"| {'':34} | {'MB/s':>7} | {'records/s':>11} | {'x curl':>6} | {'CPU s/GB':>8} | "
          f"{'peak RSS':>8} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 13}|{'-' * 8}|{'-' * 10}|{'-' * 10}|")
    for r in res["rows"]:
        print(f"| {r['name']:34} | {r['bytes_per_s'] / 1e6:7,.0f} | {r['records_per_s']:11,.0f} | "
              f"{r.get('ratio_to_curl', 0):6.2f} | {r['cpu_s_per_gb']:8.2f} | "
              + (f"{r['maxrss_mb']:6.1f} MB |" if r["maxrss_mb"] is not None else f"{'-':>8} |"))
    ch = res.get("chunked")
    if ch:
        print(f"\n(chunked row: ratio to curl on the same chunked files, "
              f"{e['bytes'] / ch['curl_seconds'] / 1e6:,.0f} MB/s at "
              f"{ch['curl_cpu_s_per_gb']:.2f} CPU s/GB)")
    fr = res.get("first_record_ms")
    if fr:
        print(f"Manifest to first record: {fr['min']:.1f} ms (best), {fr['max']:.1f} ms (worst)")
    py = res.get("python")
    if py:
        print("\nPython (records/s):")
        for k in ("raw", "parsed", "local_lines", "local_json_loads"):
            if k in py:
                print(f"  {k:18} {py[k]['records_per_s']:12,.0f}")
        if "parsed_vs_json_loads" in py:
            print(f"  parsed / json.loads on a local file: {py['parsed_vs_json_loads']:.2f}")
        tb = py.get("tables")
        if tb:
            print("\nTo typed tables (fhirbulk: from the server; the others: from local files):")
            for k, r in tb.items():
                print(f"  {k:18} {r['seconds']:8.2f} s {r['rows']:12,} rows {r['maxrss_mb']:8.0f} MB")
    jv = res.get("java")
    if jv:
        print("\nJava (records/s):")
        print(f"  binding (String)   {jv['binding']['records_per_s']:12,.0f}")
        print(f"  local readLine     {jv['local']['records_per_s']:12,.0f}")
        print(f"  ratio              {jv['ratio']:.2f}")


def print_memory(res: dict) -> None:
    if res.get("rss_slow_consumer") or res.get("rss_long_lines"):
        print()
    for r in res.get("rss_slow_consumer", []):
        print(f"Slow consumer ({res['config']['slow_mbps']:.0f} MB/s), {r['gb']:.2f} GB export: "
              f"peak RSS {r['maxrss_mb']:.1f} MB")
    for r in res.get("rss_long_lines", []):
        print(f"Long lines of {r['line_mb']:.0f} MB, {r['name']} ({r['gb']:.2f} GB): "
              f"peak RSS {r['maxrss_mb']:.1f} MB")


def print_multi(res: dict) -> None:
    m = res["multi"]
    one, many = m["single"], m["concurrent"]
    print(f"\n{many['exports']} exports downloading at once in one process (bench/multi.c, one "
          f"consumer thread each, {CONCURRENCY} downloads per export), the export above:\n")
    print(f"| {'':24} | {'MB/s':>7} | {'CPU s/GB':>8} | {'threads':>7} | {'peak RSS':>9} |")
    print(f"|{'-' * 26}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 11}|")
    for name, r in (("one export alone", one), (f"{many['exports']} at once (aggregate)", many)):
        print(f"| {name:24} | {r['bytes_per_s'] / 1e6:7,.0f} | {r['cpu_s_per_gb']:8.2f} | "
              f"{r['peak_threads']:7} | {r['maxrss_mb']:6.1f} MB |")
    print(f"Aggregate / alone: {m['ratio']:.2f}x")


def print_many_files(res: dict) -> None:
    print(f"\nMany small files (one Patient record per file, {CONCURRENCY} downloads at once, "
          f"fresh sandbox per size; client process only):\n")
    print(f"| {'files':>9} | {'client':24} | {'files/s':>9} | {'x curl':>6} | "
          f"{'CPU ms/file':>11} | {'peak RSS':>10} |")
    print(f"|{'-' * 11}|{'-' * 26}|{'-' * 11}|{'-' * 8}|{'-' * 13}|{'-' * 12}|")
    for size in res["many_files"]:
        by = {r["name"]: r for r in size["rows"]}
        # The C ABI writes nothing (curl to /dev/null); the CLI writes files (curl to disk).
        ref = {"fhirbulk C ABI": "curl, to /dev/null", "fhirbulk CLI, to disk": "curl, to disk"}
        for r in size["rows"]:
            base = by.get(ref.get(r["name"], ""))
            x = f"{r['files_per_s'] / base['files_per_s']:6.2f}" if base else f"{'':6}"
            print(f"| {size['files']:9,} | {r['name']:24} | {r['files_per_s']:9,.0f} | {x} | "
                  f"{r['cpu_ms_per_file']:11.3f} | {r['maxrss_mb']:7.1f} MB |")
    print("\nSmall files, engine vs curl (files/s; the C ABI consumes the records in memory, "
          "curl writes them to /dev/null):")
    for size in res["many_files"]:
        by = {r["name"]: r for r in size["rows"]}
        c, k = by["fhirbulk C ABI"], by["curl, to /dev/null"]
        print(f"  {size['files']:9,} files: engine {c['files_per_s']:9,.0f}, curl "
              f"{k['files_per_s']:9,.0f} ({c['files_per_s'] / k['files_per_s']:.2f}x)")
    sizes = res["many_files"]
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        lo_by = {r["name"]: r for r in lo["rows"]}
        parts = []
        for r in hi["rows"]:
            if r["name"].startswith("fhirbulk"):
                ratio = r["cpu_ms_per_file"] / lo_by[r["name"]]["cpu_ms_per_file"]
                parts.append(f"{r['name']} {ratio:.2f}x")
        print(f"CPU ms per file at {hi['files']:,} files / at {lo['files']:,}: "
              f"{', '.join(parts)} (issue 16 wants at most 1.5x)")


def print_waiting(res: dict) -> None:
    print("\nWaiting exports held by one process (bench/waiting.c; the server answers 202 with "
          "Retry-After: 600):\n")
    print(f"| {'exports':>7} | {'threads':>7} | {'RSS':>10} | {'KB per waiting export':>21} | "
          f"{'start all':>9} | {'free all':>8} |")
    print(f"|{'-' * 9}|{'-' * 9}|{'-' * 12}|{'-' * 23}|{'-' * 11}|{'-' * 10}|")
    for r in res["waiting"]:
        kb = f"{r['kb_per_export']:21,.0f}" if "kb_per_export" in r else f"{'-':>21}"
        print(f"| {r['exports']:7,} | {r['threads']:7,} | {r['rss_mb']:7.1f} MB | {kb} | "
              f"{r['start_s']:7.2f} s | {r['free_s']:6.2f} s |")
    print("(KB per waiting export: (RSS at N - RSS at 1) / (N - 1).)")

if __name__ == "__main__":
    sys.exit(main())
