"""Load a FHIR Bulk Data export into Spark with the fhirbulk connector, then write it as Parquet.

    pip install pyspark==4.2.0            # Spark 4.2 with its own jars; needs Java 17+
    bindings/spark/run-tests.sh           # or: mvn package in bindings/spark (builds the jar)
    python examples/python/spark_export.py \\
        --jar bindings/spark/target/fhirbulk-spark-0.1.0.jar \\
        --base-url https://ehr.example.org/r4 --group g1 --types Patient,Observation \\
        --client-id my-client --private-key-file /etc/fhirbulk/key.pem --out /tmp/lake

The driver kicks off the export and takes the manifest; every manifest file is one Spark task,
which downloads and decodes its file through libfhirbulk with its own token (the key file must
be readable at the same path on every executor, or use --private-key-env with
spark.executorEnv.NAME). Each action is a new export: the DataFrames are written once here.
"""

import argparse

from pyspark.sql import SparkSession


def session(jar, master="local[2]"):
    """A Spark session with the connector jar (spark.jars must be set before the first session)."""
    return (
        SparkSession.builder.master(master)
        .appName("fhirbulk-export")
        .config("spark.jars", jar)
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )


def reader(spark, base_url, group=None, types=None, **options):
    """spark.read.format("fhirbulk") with the export's options (engine config keys in camelCase)."""
    r = spark.read.format("fhirbulk").option("baseUrl", base_url)
    if group:
        r = r.option("level", "group").option("groupId", group)
    if types:
        r = r.option("types", types)
    for key, value in options.items():
        if value is not None:
            r = r.option(key, str(value).lower() if isinstance(value, bool) else str(value))
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jar", required=True, help="bindings/spark/target/fhirbulk-spark-<version>.jar")
    p.add_argument("--base-url", required=True)
    p.add_argument("--group")
    p.add_argument("--types", default="Patient,Observation")
    p.add_argument("--client-id")
    p.add_argument("--private-key-file")
    p.add_argument("--private-key-env")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--out", help="write one Parquet dataset per type under this directory")
    a = p.parse_args(argv)
    spark = session(a.jar, a.master)
    auth = dict(clientId=a.client_id, privateKeyFile=a.private_key_file, privateKeyEnv=a.private_key_env)
    # Untyped: one row per resource (resource_type, json, file, line, kind).
    rows = reader(spark, a.base_url, a.group, a.types, **auth).load()
    rows.groupBy("kind", "resource_type").count().orderBy("kind", "resource_type").show()
    if a.out:
        # Typed: the engine's FHIR R4 columns for one type, straight from Arrow batches.
        for t in a.types.split(","):
            df = reader(spark, a.base_url, a.group, a.types, type=t, **auth).load()
            df.write.mode("overwrite").parquet(f"{a.out}/{t}")
            print(f"{t}: {spark.read.parquet(f'{a.out}/{t}').count()} rows in {a.out}/{t}")
    spark.stop()


if __name__ == "__main__":
    main()
