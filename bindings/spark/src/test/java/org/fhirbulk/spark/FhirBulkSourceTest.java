package org.fhirbulk.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.apache.spark.scheduler.SparkListenerTaskStart;
import org.apache.spark.sql.DataFrameReader;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.ArrowUtils;
import org.fhirbulk.FhirBulkArrow;
import org.fhirbulk.FhirBulkException;
import org.fhirbulk.Sandbox;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The connector in Spark's local mode (two task threads, up to four attempts per task) against
 * the sandbox over HTTP: what Spark reads is compared with the sandbox's truth as the exact
 * multiset of {@code Type/id}.
 */
@Timeout(180)
class FhirBulkSourceTest {
    static final String CLIENT_ID = "spark-client";
    static final String SECRET = "s3cret-Spark-value-0123456789";

    static SparkSession spark;
    static Sandbox sb;
    static Sandbox authSb;
    static final AtomicInteger failedTasks = new AtomicInteger();
    static final AtomicInteger startedTasks = new AtomicInteger();

    @BeforeAll
    static void start() throws Exception {
        sb = Sandbox.start(60, 20, "--threads", "16");
        authSb = Sandbox.start(30, 20, "--client-id", CLIENT_ID, "--client-secret", SECRET);
        spark = SparkSession.builder().master("local[2,4]").appName("fhirbulk-test")
                .config("spark.ui.enabled", "false")
                .config("spark.sql.shuffle.partitions", "2")
                .config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.driver.host", "127.0.0.1")
                .getOrCreate();
        spark.sparkContext().addSparkListener(new SparkListener() {
            @Override
            public void onTaskStart(SparkListenerTaskStart e) {
                startedTasks.incrementAndGet();
            }

            @Override
            public void onTaskEnd(SparkListenerTaskEnd e) {
                if (!e.taskInfo().successful()) {
                    failedTasks.incrementAndGet();
                }
            }
        });
    }

    @AfterAll
    static void stop() {
        if (spark != null) {
            spark.stop();
        }
        if (sb != null) {
            sb.close();
        }
        if (authSb != null) {
            authSb.close();
        }
    }

    static DataFrameReader read(String baseUrl) {
        return spark.read().format("fhirbulk").option("baseUrl", baseUrl).option("level", "group")
                .option("groupId", "g1").option("pollMinMs", "10").option("pollMaxMs", "200");
    }

    /** The {@code Type/id} of the rows' JSON, sorted (duplicates kept). */
    static List<String> ids(Dataset<Row> rows) {
        List<String> out = new ArrayList<>();
        for (Row r : rows.where("kind = 'output'").selectExpr("resource_type", "get_json_object(json, '$.id')")
                .collectAsList()) {
            out.add(r.getString(0) + "/" + r.getString(1));
        }
        Collections.sort(out);
        return out;
    }

    static long deletes(Sandbox s) throws Exception {
        return s.requests().stream().filter(r -> "DELETE".equals(r.get("method"))).count();
    }

    static long kickoffs(Sandbox s) throws Exception {
        return s.requests().stream().filter(r -> String.valueOf(r.get("path")).endsWith("$export")).count();
    }

    static long fileGets(Sandbox s) throws Exception {
        return s.requests().stream()
                .filter(r -> "GET".equals(r.get("method")) && String.valueOf(r.get("path")).contains("/files/"))
                .count();
    }

    @Test
    void rowsOfEveryFileAreTheExportOnce() throws Exception {
        List<String> truth = sb.truthIds("group", "g1", "Patient,Observation,Condition");
        long k0 = kickoffs(sb);
        long d0 = deletes(sb);
        Dataset<Row> df = read(sb.baseUrl()).option("types", "Patient,Observation,Condition").load();
        assertEquals(Schemas.ROWS, df.schema());
        assertEquals(k0, kickoffs(sb), "load() sends no request");
        assertEquals(truth, ids(df), "every record once");
        assertEquals(k0 + 1, kickoffs(sb), "one kick-off for the action");
        // One partition per manifest file, each row from the file of its partition.
        Dataset<Row> again = read(sb.baseUrl()).option("types", "Patient,Observation,Condition").load();
        List<Row> perFile = again.groupBy("file").count().collectAsList();
        assertTrue(perFile.size() >= 6, "files: " + perFile.size());
        assertEquals(perFile.size(), again.rdd().getNumPartitions());
        List<Row> lines = again.selectExpr("file", "line").distinct().collectAsList();
        assertEquals(truth.size(), lines.size(), "(file, line) is unique");
        assertEquals(d0, deletes(sb), "a completed read deletes nothing");
    }

    @Test
    void typedTableHasTheArrowSchemaAndEveryRecordOnce() throws Exception {
        StructType expected;
        try (BufferAllocator a = new RootAllocator()) {
            expected = ArrowUtils.fromArrowSchema(FhirBulkArrow.schema("Observation", a));
        }
        Dataset<Row> obs = read(sb.baseUrl()).option("type", "Observation").option("batchRows", "7").load();
        assertEquals(expected, obs.schema(), "the engine's Arrow schema");
        List<String> got = new ArrayList<>();
        for (Row r : obs.select("id").collectAsList()) {
            got.add("Observation/" + r.getString(0));
        }
        Collections.sort(got);
        assertEquals(sb.truthIds("group", "g1", "Observation"), got);
        // Nested columns come through the Arrow vectors: every Observation has a code.
        long withCoding = obs.where("size(code.coding) > 0 and code.coding[0].code is not null").count();
        assertEquals(got.size(), withCoding);
    }

    @Test
    void writtenToParquetIsTheExportOnce(@org.junit.jupiter.api.io.TempDir Path dir) throws Exception {
        Path out = dir.resolve("patients");
        read(sb.baseUrl()).option("type", "Patient").load().write().parquet(out.toString());
        List<String> got = new ArrayList<>();
        for (Row r : spark.read().parquet(out.toString()).select("id").collectAsList()) {
            got.add("Patient/" + r.getString(0));
        }
        Collections.sort(got);
        assertEquals(sb.truthIds("group", "g1", "Patient"), got);
    }

    @Test
    void aFailedTaskIsRetriedWithoutDuplicates() throws Exception {
        // Each file's first request breaks after 3000 bytes and the engine may not retry: the
        // task fails after some of its rows, Spark runs it again, the second request is whole.
        List<String> truth = sb.truthIds("group", "g1", "Patient,Observation");
        int failedBefore = failedTasks.get();
        Dataset<Row> df = read(sb.url("drop=3000")).option("types", "Patient,Observation")
                .option("retryMaxAttempts", "1").load();
        assertEquals(truth, ids(df), "every record once though tasks failed");
        assertTrue(failedTasks.get() > failedBefore, "tasks failed and were retried");
    }

    @Test
    void tasksAuthorizeWithCredentialsFromAFile(@org.junit.jupiter.api.io.TempDir Path dir) throws Exception {
        Path secret = dir.resolve("secret");
        Files.writeString(secret, SECRET);
        List<String> truth = authSb.truthIds("group", "g1", "Patient,Observation");
        long tokensBefore = tokenRequests();
        Dataset<Row> df = read(authSb.baseUrl()).option("types", "Patient,Observation")
                .option("clientId", CLIENT_ID).option("clientSecretFile", secret.toString()).load();
        assertEquals(truth, ids(df));
        // The driver and the tasks run in one JVM here: they share one token (an executor
        // takes its own), and every file request carried it.
        assertEquals(1, tokenRequests() - tokensBefore, "one token for the process");
        List<Map<String, Object>> fileRequests = authSb.requests().stream()
                .filter(r -> String.valueOf(r.get("path")).contains("/files/")).toList();
        assertTrue(fileRequests.size() >= df.rdd().getNumPartitions());
        for (Map<String, Object> r : fileRequests) {
            assertEquals(Boolean.TRUE, r.get("auth_ok"), r.toString());
        }
        String plan = df.queryExecution().toString() + df.queryExecution().executedPlan().toString();
        assertFalse(plan.contains(SECRET), "no secret in the plan");
        // A secret as an option is refused: it would be in the plan.
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> read(authSb.baseUrl())
                .option("clientId", CLIENT_ID).option("clientSecret", SECRET).load());
        assertTrue(e.getMessage().contains("clientSecretFile"), e.getMessage());
        assertFalse(e.getMessage().contains(SECRET));
        // Without credentials: the engine's error, with the server's answer.
        Exception denied = assertThrows(Exception.class, () -> read(authSb.baseUrl()).load().count());
        Throwable cause = denied;
        while (cause != null && !(cause instanceof FhirBulkException)) {
            cause = cause.getCause();
        }
        assertTrue(cause instanceof FhirBulkException, "the engine's exception: " + denied);
        assertEquals(401, ((FhirBulkException) cause).httpStatus(), cause.toString());
    }

    static long tokenRequests() throws Exception {
        return authSb.requests().stream()
                .filter(r -> "POST".equals(r.get("method")) && String.valueOf(r.get("path")).contains("token"))
                .count();
    }

    @Test
    void optionsAreCheckedAndNamed() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> read(sb.baseUrl()).option("concurency", "4").load());
        assertTrue(e.getMessage().contains("unknown option concurency") && e.getMessage().contains("concurrency"),
                e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> read(sb.baseUrl()).option("lenient", "yes").load());
        assertTrue(e.getMessage().contains("lenient") && e.getMessage().contains("true or false"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> read(sb.baseUrl()).option("only_files", "1").load());
        assertTrue(e.getMessage().contains("set by the connector"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> spark.read().format("fhirbulk").load());
        assertTrue(e.getMessage().contains("baseUrl is required"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> read(sb.baseUrl()).load("/tmp/export"));
        assertTrue(e.getMessage().contains("reads an export from a FHIR server"), e.getMessage());
        // Both spellings of a key reach the engine: its own check names the key.
        e = assertThrows(IllegalArgumentException.class,
                () -> read(sb.baseUrl()).option("poll_min_ms", "500").load());
        assertTrue(e.getMessage().contains("options pollMinMs and poll_min_ms both set poll_min_ms"), e.getMessage());
        Exception bad = assertThrows(Exception.class, () -> spark.read().format("fhirbulk")
                .option("baseUrl", sb.baseUrl()).option("poll_min_ms", "500").option("pollMaxMs", "100").load()
                .count());
        assertTrue(String.valueOf(rootMessage(bad)).contains("poll_min_ms (500) is above poll_max_ms (100)"),
                String.valueOf(rootMessage(bad)));
    }

    static String rootMessage(Throwable t) {
        while (t.getCause() != null) {
            t = t.getCause();
        }
        return t.getMessage();
    }

    @Test
    void vendorParametersReachTheKickOff() throws Exception {
        long before = kickoffs(sb);
        Dataset<Row> df = read(sb.baseUrl()).option("types", "Patient").option("lenient", "true")
                .option("param._mdm", "true").option("param.vendorX", "a,b").load();
        assertEquals(sb.truthIds("group", "g1", "Patient"), ids(df));
        List<Map<String, Object>> k = sb.requests().stream()
                .filter(r -> String.valueOf(r.get("path")).endsWith("$export")).toList();
        assertEquals(before + 1, k.size());
        String query = String.valueOf(k.get(k.size() - 1).get("raw_query"));
        assertTrue(query.contains("_mdm=true") && query.contains("vendorX=a") && query.contains("vendorX=b"), query);
    }

    @Test
    void everyEngineKeyIsAnOption() throws Exception {
        // The README's config table: each key is an option, set by the connector, or refused
        // with a reason.
        List<String> keys = new ArrayList<>();
        boolean inTable = false;
        for (String line : Files.readAllLines(Path.of(System.getProperty("fhirbulk.repo.root"), "README.md"))) {
            if (line.startsWith("## ")) {
                inTable = line.equals("## Config keys");
                continue;
            }
            java.util.regex.Matcher m = java.util.regex.Pattern.compile("^\\| `([a-z_]+)`(?:, `([a-z_]+)`)? \\|")
                    .matcher(line);
            if (inTable && m.find()) {
                keys.add(m.group(1));
                if (m.group(2) != null) {
                    keys.add(m.group(2));
                }
            }
        }
        assertTrue(keys.contains("base_url") && keys.contains("manifest_only"), keys.toString());
        for (String k : keys) {
            boolean known = ConnectorOptions.ENGINE_KEYS.containsKey(k) || ConnectorOptions.MANAGED.contains(k)
                    || ConnectorOptions.UNSUPPORTED.containsKey(k) || k.equals("headers") || k.equals("params")
                    || k.equals("auth");
            assertTrue(known, "engine key " + k + " has no option");
        }
    }

    @Test
    void aCancelledJobDeletesTheExport() throws Exception {
        // Each file's first request pauses 30 s in its body: the tasks are reading when the job
        // is cancelled.
        long before = deletes(sb);
        String scenario = "stall=30000;length";
        Dataset<Row> df = read(sb.url(scenario)).option("types", "Patient").load();
        ExecutorService pool = Executors.newSingleThreadExecutor();
        int started = startedTasks.get();
        Future<Long> f = pool.submit(() -> {
            spark.sparkContext().setJobGroup("fhirbulk-cancel", "cancel test", true);
            try {
                return df.count();
            } finally {
                spark.sparkContext().clearJobGroup();
            }
        });
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        while (startedTasks.get() == started || fileGets(sb) == 0) {
            assertTrue(System.nanoTime() < deadline, "no task started");
            Thread.sleep(20);
        }
        Thread.sleep(300);
        long t0 = System.nanoTime();
        spark.sparkContext().cancelJobGroup("fhirbulk-cancel");
        Exception e = assertThrows(Exception.class, () -> f.get(60, TimeUnit.SECONDS));
        assertTrue(String.valueOf(e).contains("cancel"), String.valueOf(e));
        while (deletes(sb) == before) {
            assertTrue(System.nanoTime() < deadline, "no DELETE after the cancel");
            Thread.sleep(20);
        }
        long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
        assertTrue(ms < 20_000, "the DELETE came " + ms + " ms after the cancel, not after the stall");
        Thread.sleep(500);
        assertEquals(before + 1, deletes(sb), "one DELETE");
        List<Map<String, Object>> dels = sb.requests().stream().filter(r -> "DELETE".equals(r.get("method")))
                .toList();
        assertTrue(String.valueOf(dels.get(dels.size() - 1).get("path")).contains("/jobs/"), dels.toString());
        pool.shutdownNow();
    }
}
