#!/usr/bin/env python3
"""The Spark connector's benchmark: one command, the figures side by side.

    make bench-spark        # bindings/spark/run-tests.sh first (the jar and the pyspark venv)
    python3 bench/spark_bench.py [--patients 20000] [--records-per-file 400] [--runs 2]

On this machine (the sandbox runs here too, with --prerender, on 127.0.0.1), one many-file
system-level export (every type; about --patients * 13 resources in files of at most
--records-per-file records; the default is about 260,000 resources, 370 MB, 700 files):

1. the engine in one process: `fhirbulk export -o DIR` (the CLI, to disk), wall and CPU
   seconds; DIR then holds the same files for Spark's own reader;
2. Spark in local[1] and in local[2], each in a JVM of its own (PySpark with the connector on
   spark.jars), best of --runs, wall seconds and the JVM's CPU seconds (/proc):
   - `fhirbulk rows`: format("fhirbulk") without a type, every file, count(*) and
     sum(length(json)) (the driver's kick-off and manifest, then a task per file);
   - `fhirbulk typed Observation`: with .option("type", "Observation"), count(id) (the
     engine's Arrow batches through ArrowColumnVector);
   - `spark.read.json`: Spark's JSON source over DIR's NDJSON files (schema inference and
     parse, from the page cache, no network), count(id); and over DIR's Observation files.
   - `spark tasks only`: `spark.range` with one empty partition per file, Spark's own cost of
     scheduling that many tasks (the floor of one partition per file);
3. prints records/s, MB/s and CPU seconds per GB of NDJSON, and each Spark row's time as a
   ratio to the engine's single process; writes the results as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def jvm_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(a) -> None:
    """In the pyspark venv: one Spark session (a.worker is the master), the queries, JSON out."""
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(a.worker).appName("fhirbulk-bench")
             .config("spark.jars", a.jar).config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "2g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    pid = spark._jvm.java.lang.ProcessHandle.current().pid()
    local = Path(a.local)

    def fhirbulk(**opts):
        r = spark.read.format("fhirbulk").option("baseUrl", a.base).option("pollMinMs", "10")
        for k, v in opts.items():
            r = r.option(k, v)
        return r.load()

    nfiles = int(a.files)
    queries = {
        # Spark's own cost of the tasks, no data: a job of as many partitions as the export has files.
        "spark tasks only": lambda: spark.range(0, nfiles, 1, nfiles).selectExpr("count(id)").collect()[0][0],
        "fhirbulk rows": lambda: fhirbulk().selectExpr("count(*)", "sum(length(json))").collect()[0][0],
        "fhirbulk typed Observation": lambda: fhirbulk(type="Observation").selectExpr("count(id)").collect()[0][0],
        "spark.read.json": lambda: spark.read.json(
            sorted(str(p) for p in local.glob("*.ndjson") if p.name != "log.ndjson")).selectExpr("count(id)").collect()[0][0],
        "spark.read.json Observation": lambda: spark.read.json(
            sorted(str(p) for p in local.glob("Observation.*.ndjson"))).selectExpr("count(id)").collect()[0][0],
    }
    out = {}
    for name, q in queries.items():
        runs = []
        for _ in range(a.runs):
            c0, t0 = jvm_cpu_s(pid), time.perf_counter()
            n = q()
            runs.append({"seconds": time.perf_counter() - t0, "cpu_s": jvm_cpu_s(pid) - c0, "records": n})
        out[name] = min(runs, key=lambda r: r["seconds"])
    spark.stop()
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=20000)
    ap.add_argument("--records-per-file", type=int, default=400)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--jar", default=str(ROOT / "bindings/spark/target/fhirbulk-spark-0.1.0.jar"))
    ap.add_argument("--python", default=str(ROOT / "bindings/spark/target/pyspark-venv/bin/python"),
                    help="a Python with pyspark (run-tests.sh makes this one)")
    ap.add_argument("--json", default=str(ROOT / "target/bench/spark.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--local", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return 0

    import run as bench  # bench/run.py: the sandbox and child-process helpers

    for p in (a.jar, a.python):
        if not Path(p).exists():
            sys.exit(f"spark_bench: {p} is missing: run bindings/spark/run-tests.sh first")
    bench.run(["cargo", "build", "--release", "--features", "cli,sandbox", "--bin", "fhirbulk", "--bin",
               "fhirbulk-sandbox"], cwd=ROOT)
    cli = ROOT / "target/release/fhirbulk"
    sb = bench.Sandbox(ROOT / "target/release/fhirbulk-sandbox", a.patients, a.records_per_file, prerender=True)
    results: dict = {"patients": a.patients, "records_per_file": a.records_per_file}
    try:
        base = sb.base("polls=0")
        with tempfile.TemporaryDirectory(prefix="fhirbulk-spark-bench-") as tmp:
            local = Path(tmp) / "export"
            engine = []
            for i in range(a.runs):
                d = local if i == a.runs - 1 else Path(tmp) / f"run{i}"
                wall, cpu, _ = bench.run_child([str(cli), "export", "-u", base, "-o", str(d), "--quiet"])
                engine.append({"seconds": wall, "cpu_s": cpu["user_s"] + cpu["sys_s"]})
            files = sorted(p for p in local.glob("*.ndjson") if p.name != "log.ndjson")
            size = sum(p.stat().st_size for p in files)
            records = sum(1 for p in files for _ in open(p, "rb"))
            obs_files = [p for p in files if p.name.startswith("Observation.")]
            obs_size = sum(p.stat().st_size for p in obs_files)
            results.update(files=len(files), bytes=size, records=records, observation_bytes=obs_size)
            results["engine"] = dict(min(engine, key=lambda r: r["seconds"]), records=records)
            for master in ("local[1]", "local[2]"):
                bench.log(f"Spark {master}")
                p = subprocess.run([a.python, __file__, "--worker", master, "--jar", a.jar, "--base", base,
                                    "--local", str(local), "--runs", str(a.runs), "--files", str(len(files))],
                                   check=True, capture_output=True, text=True)
                results[master] = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        sb.stop()
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=1))
    print_table(results)
    return 0


def print_table(r: dict) -> None:
    gb = r["bytes"] / 1e9
    print(f"\nSpark connector: {r['records']:,} records, {r['bytes'] / 1e6:,.0f} MB of NDJSON in "
          f"{r['files']:,} files (Observation: {r['observation_bytes'] / 1e6:,.0f} MB)\n")
    print(f"| {'reader':<40} | {'records':>9} | {'s':>6} | {'records/s':>10} | {'MB/s':>6} | "
          f"{'CPU s/GB':>8} | {'time vs engine':>14} |")
    print(f"|{'-' * 42}|{'-' * 11}:|{'-' * 7}:|{'-' * 11}:|{'-' * 7}:|{'-' * 9}:|{'-' * 15}:|")
    e = r["engine"]

    def row(name, x, size):
        print(f"| {name:<40} | {x['records']:>9,} | {x['seconds']:>6.2f} | {x['records'] / x['seconds']:>10,.0f} | "
              f"{size / 1e6 / x['seconds']:>6.0f} | {x['cpu_s'] / (size / 1e9):>8.1f} | "
              f"{x['seconds'] / e['seconds']:>13.2f}x |")

    row("engine, one process (fhirbulk export)", e, r["bytes"])
    for master in ("local[1]", "local[2]"):
        for name, x in r[master].items():
            if name == "spark tasks only":
                continue
            size = r["observation_bytes"] if "Observation" in name else r["bytes"]
            row(f"{name}, {master}", x, size)
    print(f"\n(CPU s/GB: the process's user+sys seconds per GB of NDJSON it read; {gb:.2f} GB in all.)")
    for master in ("local[1]", "local[2]"):
        t = r[master]["spark tasks only"]
        print(f"Spark's own task cost, {master}: a job of {r['files']:,} empty partitions takes {t['seconds']:.2f} s "
              f"({t['cpu_s']:.1f} CPU s), {t['seconds'] / r[master]['fhirbulk rows']['seconds']:.0%} of the rows read")


if __name__ == "__main__":
    sys.exit(main())
