package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Set;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** Complete exports over HTTP against the sandbox: exact counts, record views, metadata. */
@ExtendWith(SandboxExtension.class)
@Timeout(60)
class ExportTest {
    /** The sandbox's patient-compartment types (src/sandbox/data.rs TYPES[..N_PATIENT_TYPES]). */
    static final String ALL_PATIENT_TYPES = "Patient,Encounter,Observation,Condition,MedicationRequest,"
            + "DiagnosticReport,DocumentReference,Procedure,Immunization,AllergyIntolerance";

    @Test
    void libraryLoadsWithTheExpectedAbi() {
        assertEquals(3, FhirBulk.abiVersion());
        assertTrue(FhirBulk.version().matches("\\d+\\.\\d+\\.\\d+.*"), FhirBulk.version());
        assertTrue(FhirBulk.libraryLocation().endsWith("libfhirbulk.so"), FhirBulk.libraryLocation());
        UnsatisfiedLinkError e = assertThrows(UnsatisfiedLinkError.class, () -> LibFhirBulk.checkAbi(2, "/x/lib.so"));
        assertTrue(e.getMessage().contains("ABI version 2") && e.getMessage().contains("needs ABI version 3"),
                e.getMessage());
    }

    @Test
    void aProcessWideDownloadCapStillDeliversEveryRecordOnce(Sandbox sb) throws Exception {
        assertThrows(IllegalArgumentException.class, () -> FhirBulk.setMaxDownloads(-1));
        Map<String, Long> truth = sb.truth("group", "g1", "Patient,Observation");
        FhirBulk.setMaxDownloads(1);
        try {
            Set<String> seen = new HashSet<>();
            Map<String, Long> counts = new TreeMap<>();
            try (Export export = FhirBulk.export(sb.url("polls=0"))
                    .group("g1").types("Patient", "Observation")
                    .option("concurrency", 4)
                    .start()) {
                for (BulkRecord r : export) {
                    assertTrue(seen.add(r.resourceType() + "/" + idOf(r.json())), r.toString());
                    counts.merge(r.resourceType(), 1L, Long::sum);
                }
            }
            assertEquals(truth, counts);
        } finally {
            FhirBulk.setMaxDownloads(0);
        }
    }

    @Test
    void groupExportDeliversExactlyTheTruth(Sandbox sb) throws Exception {
        Map<String, Long> truth = sb.truth("group", "g1", ALL_PATIENT_TYPES);
        // Every patient-compartment type the sandbox serves (it serves 12, the last two,
        // Organization and Practitioner, at system level only).
        assertEquals(sb.truth("group", "g1", null).keySet(), truth.keySet());
        assertEquals(10, truth.size(), truth.toString());
        Map<String, Long> counts = new TreeMap<>();
        Map<Integer, Long> lastLine = new HashMap<>();
        long total = 0;
        try (Export export = FhirBulk.export(sb.url("polls=0"))
                .group("g1")
                .types(ALL_PATIENT_TYPES.split(","))
                .option("concurrency", 4)
                .start()) {
            for (BulkRecord r : export) {
                assertEquals(Kind.OUTPUT, r.kind());
                counts.merge(r.resourceType(), 1L, Long::sum);
                total++;
                String json = r.json();
                assertTrue(json.startsWith("{") && json.endsWith("}"), r.toString());
                assertTrue(json.contains("\"resourceType\":\"" + r.resourceType() + "\""), r.toString());
                assertEquals(r.length(), json.getBytes(StandardCharsets.UTF_8).length);
                byte[] bytes = r.bytes();
                assertEquals(json, new String(bytes, StandardCharsets.UTF_8));
                ByteBuffer buf = r.buffer();
                assertTrue(buf.isReadOnly() && buf.isDirect());
                assertEquals(r.length(), buf.remaining());
                assertEquals('{', buf.get(0));
                assertEquals('}', buf.get(buf.limit() - 1));
                // Lines of one file arrive in order, 1-based, none missing.
                long prev = lastLine.getOrDefault(r.fileIndex(), 0L);
                assertEquals(prev + 1, r.line(), r.toString());
                lastLine.put(r.fileIndex(), r.line());
                assertFalse(r.toString().contains("{"), "toString shows no content");
            }
            assertEquals(truth, counts);

            Progress p = export.progress();
            assertEquals(Progress.State.DONE, p.state());
            assertEquals(total, p.records());
            assertEquals(p.filesTotal(), p.filesDone());
            assertTrue(p.filesTotal() >= 7, "several files per type: " + p.filesTotal());
            assertTrue(p.bytes() > 0);
            assertEquals(0, p.errorCode());

            String manifest = export.manifest();
            assertNotNull(manifest);
            Map<String, Object> m = Json.parseObject(manifest);
            assertEquals(p.filesTotal(), ((List<?>) m.get("output")).size());
            Instant tt = export.transactionTime().orElseThrow();
            assertTrue(tt.isBefore(Instant.now().plusSeconds(60)));
            List<?> files = (List<?>) Json.parse(export.files());
            assertEquals(p.filesTotal(), files.size());
            assertNotNull(export.checkpoint());
        }
    }

    @Test
    void checkpointPartWayThroughABatchThenResumeDeliversEachRecordOnce(Sandbox sb) throws Exception {
        Map<String, Long> truth = sb.truth("group", "g1", "Patient,Observation");
        Set<String> seen = new HashSet<>();
        String checkpoint;
        // Stop after 7 records: part-way through the first batch.
        try (Export first = FhirBulk.export(sb.url("polls=0"))
                .group("g1").types("Patient", "Observation")
                .option("delete_on_cancel", false)
                .start()) {
            Iterator<BulkRecord> it = first.iterator();
            for (int i = 0; i < 7; i++) {
                BulkRecord r = it.next();
                assertTrue(seen.add(r.resourceType() + "/" + idOf(r.json())), r.toString());
            }
            checkpoint = first.checkpoint();
        }
        try (Export rest = FhirBulk.export(sb.url("polls=0"))
                .group("g1").types("Patient", "Observation")
                .resume(checkpoint)
                .start()) {
            for (BulkRecord r : rest) {
                assertTrue(seen.add(r.resourceType() + "/" + idOf(r.json())), "twice: " + r);
            }
        }
        Map<String, Long> counts = new TreeMap<>();
        for (String k : seen) {
            counts.merge(k.substring(0, k.indexOf('/')), 1L, Long::sum);
        }
        assertEquals(truth, counts, "every record once, none lost");
    }

    @Test
    void eachFileReadByAnExportOfItsOwnGivesTheExportOnce(Sandbox sb) throws Exception {
        Map<String, Long> truth = sb.truth("group", "g1", "Patient,Observation");
        String checkpoint;
        String files;
        // The driver: the manifest and nothing else.
        try (Export driver = FhirBulk.export(sb.url("polls=0"))
                .group("g1").types("Patient", "Observation")
                .manifestOnly()
                .start()) {
            for (BulkRecord r : driver) {
                throw new AssertionError("a manifestOnly export delivered " + r);
            }
            assertEquals(0, driver.progress().bytes(), "no file downloaded");
            checkpoint = driver.checkpoint();
            assertEquals(Boolean.TRUE, Json.parseObject(checkpoint).get("manifest_complete"));
            files = driver.files();
        }
        int n = ((List<?>) Json.parse(files)).size();
        assertTrue(n >= 2, "files: " + n);
        Set<String> seen = new HashSet<>();
        for (int k = n - 1; k >= 0; k--) {
            try (Export task = FhirBulk.export(sb.url("polls=0"))
                    .group("g1").types("Patient", "Observation")
                    .resume(checkpoint).resumeFiles(files).onlyFiles(k)
                    .option("delete_on_cancel", false)
                    .start()) {
                for (BulkRecord r : task) {
                    assertEquals(k, r.fileIndex(), r.toString());
                    assertTrue(seen.add(r.resourceType() + "/" + idOf(r.json())), "twice: " + r);
                }
            }
        }
        Map<String, Long> counts = new TreeMap<>();
        for (String k : seen) {
            counts.merge(k.substring(0, k.indexOf('/')), 1L, Long::sum);
        }
        assertEquals(truth, counts, "every record once, none lost");
        assertThrows(IllegalArgumentException.class, () -> FhirBulk.export(sb.url("polls=0")).onlyFiles(-1));
        FhirBulkException e = assertThrows(FhirBulkException.class, () -> FhirBulk.export(sb.url("polls=0"))
                .onlyFiles(0).start().close());
        assertTrue(e.getMessage().contains("ExportBuilder.onlyFiles(int...) is given without ExportBuilder.resume(String)"),
                e.getMessage());
    }

    @Test
    void vendorParametersAreSentAsGiven(Sandbox sb) throws Exception {
        long patients = sb.truth("group", "g1", "Patient").get("Patient");
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient")
                .option("lenient", true).param("_mdm", "true").param("x", "1").param("x", "a b").start()) {
            long n = 0;
            long ignored = 0;
            for (BulkRecord r : export) {
                if (r.kind() == Kind.OUTPUT) {
                    n++;
                } else if (r.json().contains("unsupported parameter")) {
                    ignored++; // the lenient server says what it ignored, in the error files
                }
            }
            assertEquals(patients, n);
            assertEquals(2, ignored, "the server saw both names");
        }
        List<Map<String, Object>> kickoffs = new ArrayList<>();
        for (Map<String, Object> r : sb.requests()) {
            if (String.valueOf(r.get("path")).endsWith("$export")) {
                kickoffs.add(r);
            }
        }
        String query = String.valueOf(kickoffs.get(kickoffs.size() - 1).get("raw_query"));
        assertTrue(query.endsWith("_mdm=true&x=1&x=a%20b"), query);
    }

    @Test
    void warningsAndLongWaitsShowInTheProgress(Sandbox sb) throws Exception {
        long patients = sb.truth("group", "g1", "Patient").get("Patient");
        // A manifest that lists a file twice: downloaded once, and said.
        try (Export export = FhirBulk.export(sb.url("polls=0;dup_entry")).group("g1").types("Patient").start()) {
            long n = 0;
            for (BulkRecord r : export) {
                n++;
            }
            assertEquals(patients, n);
            assertTrue(export.progress().warnings() >= 1);
            assertTrue(export.warnings().stream().anyMatch(w -> w.contains("more than once")),
                    export.warnings().toString());
        }
        // The file request is throttled with Retry-After: 3: the wait shows while it lasts.
        try (Export export = FhirBulk.export(sb.url("polls=0;file_error=429:1;error_retry_after=3")).group("g1")
                .types("Patient").option("poll_max_ms", 10_000).start()) {
            Progress seen = null;
            long t0 = System.currentTimeMillis();
            while (seen == null && System.currentTimeMillis() - t0 < 10_000) {
                Progress p = export.progress();
                if (p.waitUntilMs() != 0) {
                    seen = p;
                }
                Thread.sleep(20);
            }
            assertTrue(seen != null, "a wait of 3 s shows");
            assertTrue(seen.waitReason().contains("429"), seen.toString());
            long left = seen.waitUntilMs() - System.currentTimeMillis();
            assertTrue(left <= 3500, seen + " left " + left);
            long n = 0;
            for (BulkRecord r : export) {
                n++;
            }
            assertEquals(patients, n);
            assertEquals(0, export.progress().waitUntilMs());
        }
    }

    private static String idOf(String json) {
        return (String) Json.parseObject(json).get("id");
    }

    @Test
    void systemExportAsStreamWithSince(Sandbox sb) throws Exception {
        String since = "2024-01-15T00:00:00Z";
        Map<String, Long> truth = new TreeMap<>(Json.parseObject(sb.get("/_sandbox/truth?level=system&_since=" + since))
                .entrySet().stream().filter(e -> (Long) e.getValue() > 0)
                .collect(Collectors.toMap(Map.Entry::getKey, e -> (Long) e.getValue())));
        Map<String, Long> all = sb.truth("system", null, null);
        assertTrue(truth.values().stream().mapToLong(Long::longValue).sum()
                < all.values().stream().mapToLong(Long::longValue).sum(), "since filters something");
        Map<String, Long> counts;
        try (Export export = FhirBulk.export(sb.url("polls=0")).since(Instant.parse(since)).start()) {
            counts = new TreeMap<>(export.stream()
                    .collect(Collectors.groupingBy(BulkRecord::resourceType, Collectors.counting())));
        }
        assertEquals(truth, counts);
    }

    @Test
    void errorAndDeletedFilesArriveWithTheirKind(Sandbox sb) throws Exception {
        String since = "2024-01-15T00:00:00Z";
        Map<String, Long> truth = new TreeMap<>(Json.parseObject(
                sb.get("/_sandbox/truth?level=group&group=g1&_type=Patient,Observation&_since=" + since))
                .entrySet().stream().collect(Collectors.toMap(Map.Entry::getKey, e -> (Long) e.getValue())));
        Map<String, Long> output = new TreeMap<>();
        Map<Kind, Long> other = new TreeMap<>();
        try (Export export = FhirBulk.export(sb.url("polls=0;errors;deleted=3")).group("g1")
                .types("Patient", "Observation").since(Instant.parse(since)).start()) {
            for (BulkRecord r : export) {
                if (r.kind() == Kind.OUTPUT) {
                    output.merge(r.resourceType(), 1L, Long::sum);
                } else {
                    other.merge(r.kind(), 1L, Long::sum);
                    String expectedType = r.kind() == Kind.ERROR ? "OperationOutcome" : "Bundle";
                    assertEquals(expectedType, r.resourceType());
                    assertTrue(r.json().contains("\"resourceType\":\"" + expectedType + "\""), r.json());
                }
            }
        }
        assertEquals(truth, output);
        assertEquals(Map.of(Kind.ERROR, 2L, Kind.DELETED, 3L), other);
    }

    @Test
    void streamCloseClosesTheExport(Sandbox sb) throws Exception {
        Export export = FhirBulk.export(sb.url("polls=0")).group("g2").types("Patient").start();
        long n;
        try (var s = export.stream()) {
            n = s.count();
        }
        assertTrue(export.isClosed());
        assertEquals(sb.truth("group", "g2", "Patient").get("Patient"), n);
        assertThrows(IllegalStateException.class, export::progress);
        export.close();
    }

    @Test
    void recordsBecomeInvalidWhenTheIterationMovesOn(Sandbox sb) {
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient", "Observation")
                .option("concurrency", 1).start()) {
            Iterator<BulkRecord> it = export.iterator();
            BulkRecord first = it.next();
            String firstJson = first.json();
            BulkRecord other = null;
            while (it.hasNext()) {
                BulkRecord r = it.next();
                if (r.fileIndex() != first.fileIndex()) { // a batch holds lines of one file
                    other = r;
                    break;
                }
            }
            assertNotNull(other);
            IllegalStateException e = assertThrows(IllegalStateException.class, first::json);
            assertTrue(e.getMessage().contains("no longer valid"), e.getMessage());
            assertThrows(IllegalStateException.class, first::bytes);
            assertThrows(IllegalStateException.class, first::buffer);
            assertEquals(1, first.line()); // metadata stays
            assertTrue(firstJson.startsWith("{"));
            assertTrue(other.json().startsWith("{"));
            assertThrows(IllegalStateException.class, export::iterator, "an export is iterated once");
        }
    }

    @Test
    void manyExportsInParallelThreads(Sandbox sb) throws Exception {
        Map<String, Long> g1 = sb.truth("group", "g1", ALL_PATIENT_TYPES);
        Map<String, Long> g2 = sb.truth("group", "g2", "Patient,Observation");
        int threads = 4;
        List<Thread> workers = new java.util.ArrayList<>();
        Map<Integer, Object> results = new java.util.concurrent.ConcurrentHashMap<>();
        for (int i = 0; i < threads; i++) {
            int id = i;
            Thread t = new Thread(() -> {
                try {
                    ExportBuilder b = FhirBulk.export(sb.url("polls=0")).option("concurrency", 2);
                    if (id % 2 == 0) {
                        b.group("g1").types(ALL_PATIENT_TYPES.split(","));
                    } else {
                        b.group("g2").types("Patient", "Observation");
                    }
                    Map<String, Long> counts = new TreeMap<>();
                    try (Export e = b.start()) {
                        for (BulkRecord r : e) {
                            counts.merge(r.resourceType(), 1L, Long::sum);
                            r.json();
                        }
                    }
                    results.put(id, counts);
                } catch (Throwable t2) {
                    results.put(id, t2);
                }
            }, "export-" + i);
            workers.add(t);
            t.start();
        }
        for (Thread t : workers) {
            t.join(45_000);
        }
        for (int i = 0; i < threads; i++) {
            Object r = results.get(i);
            if (r instanceof Throwable t) {
                throw new AssertionError("export " + i + " failed", t);
            }
            assertEquals(i % 2 == 0 ? g1 : g2, r, "export " + i);
        }
    }

    @Test
    void headersAndStringsAreEscapedProperly(Sandbox sb) throws Exception {
        String value = "say \"hi\" \\ back / tab\tend";
        try (Export export = FhirBulk.export(sb.url("polls=0;fromjava")).group("g2").types("Patient")
                .header("X-Fhirbulk-Test", value).start()) {
            assertThrows(BadRequestException.class, () -> export.iterator().hasNext(),
                    "unknown scenario key answers 400");
        }
        try (Export export = FhirBulk.export(sb.url("polls=0;progress=java")).group("g2").types("Patient")
                .header("X-Fhirbulk-Test", value).start()) {
            long n = 0;
            for (BulkRecord r : export) {
                n++;
            }
            assertEquals(sb.truth("group", "g2", "Patient").get("Patient"), n);
        }
        boolean seen = false;
        for (Map<String, Object> req : sb.requests()) {
            if (String.valueOf(req.get("path")).endsWith("/Group/g2/$export")
                    && String.valueOf(req.get("path")).contains("progress=java")) {
                for (Object h : (List<?>) req.get("headers")) {
                    List<?> pair = (List<?>) h;
                    if (pair.get(0).equals("x-fhirbulk-test")) {
                        assertEquals(value, pair.get(1));
                        seen = true;
                    }
                }
            }
        }
        assertTrue(seen, "the header reached the server unchanged");
    }
}
