"""The connector from PySpark, with only the shaded jar on spark.jars (run by run-tests.sh in a
virtualenv with pyspark): examples/python/spark_export.py's reader against the sandbox, rows and
a typed table written to Parquet, compared with the sandbox's truth as exact multisets of ids."""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, os.path.join(root, "examples", "python"))
import spark_export  # noqa: E402


def start_sandbox(binary, tmp):
    port_file = os.path.join(tmp, "port")
    log = open(os.path.join(tmp, "sandbox.log"), "wb")
    proc = subprocess.Popen(
        [binary, "--port", "0", "--port-file", port_file, "--patients", "40", "--records-per-file", "15"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while time.time() < deadline:
        if os.path.exists(port_file) and open(port_file).read().strip():
            return proc, int(open(port_file).read().strip())
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise SystemExit("the sandbox did not start")


def main():
    jar, binary = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_sandbox(binary, tmp)
        try:
            root_url = f"http://127.0.0.1:{port}"
            base = root_url + "/fhir"
            types = "Patient,Observation"
            truth = json.load(urllib.request.urlopen(
                f"{root_url}/_sandbox/truth?ids=1&level=group&group=g1&_type={types}"))
            spark = spark_export.session(jar)
            rows = spark_export.reader(spark, base, "g1", types, pollMinMs=10, pollMaxMs=200).load()
            got = sorted(f"{r[0]}/{r[1]}" for r in rows.where("kind = 'output'")
                         .selectExpr("resource_type", "get_json_object(json, '$.id')").collect())
            assert got == truth, f"rows: {len(got)} ids, truth {len(truth)}"
            obs = spark_export.reader(spark, base, "g1", types, type="Observation", pollMinMs=10).load()
            out = os.path.join(tmp, "Observation")
            obs.write.parquet(out)
            got = sorted("Observation/" + r[0] for r in spark.read.parquet(out).select("id").collect())
            assert got == [t for t in truth if t.startswith("Observation/")], "typed Observation"
            assert "code" in obs.columns and "_remainder" in obs.columns, obs.columns
            try:
                spark_export.reader(spark, base, "g1", types, concurency=4).load()
                raise AssertionError("a misspelt option is refused")
            except Exception as e:  # py4j hands the IllegalArgumentException over as Python's
                assert "did you mean concurrency" in str(e), str(e)
            spark.stop()
            print(f"PySpark: OK ({len(truth)} records, rows and typed Observation equal the truth)")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
