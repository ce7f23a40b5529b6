package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.VarCharVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.ipc.ArrowReader;
import org.apache.arrow.vector.types.Types.MinorType;
import org.apache.arrow.vector.types.pojo.Field;
import org.apache.arrow.vector.types.pojo.Schema;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * The Arrow path (FhirBulkArrow): batches of every type and a reader per type against the
 * sandbox, compared id by id with the record API; schemas; errors; cancel and close; no memory
 * left in the allocator afterwards.
 */
@ExtendWith(SandboxExtension.class)
@Timeout(60)
class ArrowTest {
    static final String[] TYPES = {"Patient", "Observation"};

    BufferAllocator allocator;

    @BeforeEach
    void allocator() {
        allocator = new RootAllocator();
    }

    /** Every test closes what it was given: nothing is left in the allocator. */
    @AfterEach
    void nothingLeft() {
        assertEquals(0, allocator.getAllocatedMemory(), "memory left in the allocator");
        allocator.close(); // throws on an open child or buffer
    }

    /** "Type/id" -> how often, from the record API (output records only). */
    static Map<String, Integer> recordIds(ExportBuilder b) {
        Map<String, Integer> out = new TreeMap<>();
        try (Export export = b.start()) {
            for (BulkRecord r : export) {
                if (r.kind() == Kind.OUTPUT) {
                    out.merge(r.resourceType() + "/" + Json.parseObject(r.json()).get("id"), 1, Integer::sum);
                }
            }
        }
        return out;
    }

    /** Adds a batch's "Type/id"s to {@code ids}. */
    static void addIds(String type, VectorSchemaRoot root, Map<String, Integer> ids) {
        VarCharVector id = (VarCharVector) root.getVector("id");
        assertEquals(root.getRowCount(), id.getValueCount());
        for (int i = 0; i < root.getRowCount(); i++) {
            assertFalse(id.isNull(i), type + " row " + i + " has an id");
            ids.merge(type + "/" + id.getObject(i), 1, Integer::sum);
        }
    }

    static Map<String, Long> countsByType(Map<String, Integer> ids) {
        Map<String, Long> out = new TreeMap<>();
        ids.forEach((k, n) -> out.merge(k.substring(0, k.indexOf('/')), (long) n, Long::sum));
        return out;
    }

    // ---- schemas ------------------------------------------------------------------------------

    @Test
    void aTypesSchemaHasItsElementsThenTheRemainder() {
        assertTrue(FhirBulkArrow.available());
        Schema s = FhirBulkArrow.schema("Patient", allocator);
        List<Field> fields = s.getFields();
        assertEquals("Patient", s.getCustomMetadata().get("fhir.resourceType"), s.getCustomMetadata().toString());
        assertEquals(MinorType.VARCHAR, Types.of(s.findField("id")));
        assertEquals(MinorType.BIT, Types.of(s.findField("active")));
        assertEquals(MinorType.LIST, Types.of(s.findField("name")));
        assertEquals(MinorType.STRUCT, Types.of(s.findField("name").getChildren().get(0)));
        assertEquals(FhirBulkArrow.REMAINDER, fields.get(fields.size() - 1).getName());
        assertTrue(fields.size() > 10, fields.size() + " fields");
        // The same every time; a decimal keeps its text, marked in the field metadata.
        assertEquals(s, FhirBulkArrow.schema("Patient", allocator));
        Field value = FhirBulkArrow.schema("Observation", allocator).findField("valueQuantity").getChildren()
                .stream().filter(f -> f.getName().equals("value")).findFirst().orElseThrow();
        assertEquals(MinorType.VARCHAR, Types.of(value));
        assertEquals("decimal", value.getMetadata().get("fhir.type"));
        // A type FHIR R4 does not define: id and the remainder.
        List<String> names = FhirBulkArrow.schema("NoSuchType", allocator).getFields().stream()
                .map(Field::getName).toList();
        assertEquals(List.of("id", FhirBulkArrow.REMAINDER), names);
        for (String bad : new String[] {null, "", "Pat\0ient"}) {
            assertThrows(IllegalArgumentException.class, () -> FhirBulkArrow.schema(bad, allocator));
        }
    }

    /** MinorType of a field. */
    static final class Types {
        static MinorType of(Field f) {
            assertNotNull(f);
            return org.apache.arrow.vector.types.Types.getMinorTypeForArrowType(f.getType());
        }
    }

    // ---- batches ------------------------------------------------------------------------------

    @Test
    void batchesOfEveryTypeCarryExactlyTheRecordsIds(Sandbox sb) throws Exception {
        // A system export serves all 12 types of the sandbox.
        Map<String, Long> truth = sb.truth("system", null, null);
        assertEquals(12, truth.size(), truth.toString());
        Map<String, Integer> want = recordIds(FhirBulk.export(sb.url("polls=0")).system());
        assertEquals(truth, countsByType(want));

        int maxRows = 40;
        Map<String, Integer> got = new TreeMap<>();
        Map<String, List<Integer>> sizes = new TreeMap<>();
        Map<String, Schema> schemas = new HashMap<>();
        try (Export export = FhirBulk.export(sb.url("polls=0")).system().start();
                ArrowBatches batches = FhirBulkArrow.batches(export, allocator, maxRows)) {
            for (ArrowBatch b : batches) {
                try (b) {
                    Schema want1 = schemas.computeIfAbsent(b.resourceType(), t -> FhirBulkArrow.schema(t, allocator));
                    assertEquals(want1, b.root().getSchema(), b.resourceType());
                    sizes.computeIfAbsent(b.resourceType(), t -> new ArrayList<>()).add(b.rowCount());
                    addIds(b.resourceType(), b.root(), got);
                }
            }
            assertTrue(batches.isComplete());
            assertEquals(truth.values().stream().mapToLong(Long::longValue).sum(), batches.rows());
            assertEquals(Progress.State.DONE, export.progress().state());
            assertFalse(batches.hasNext());
        }
        assertEquals(want, got, "the same ids, each once");
        for (Map.Entry<String, List<Integer>> e : sizes.entrySet()) {
            List<Integer> s = e.getValue();
            // Full batches, but for the last one of each decode thread (up to 4).
            assertTrue(s.stream().allMatch(n -> n > 0 && n <= maxRows), e.toString());
            assertTrue(s.stream().filter(n -> n < maxRows).count() <= 4, e.toString());
        }
    }

    @Test
    void batchesOutliveTheExportAndTheIteration(Sandbox sb) throws Exception {
        List<ArrowBatch> kept = new ArrayList<>();
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types(TYPES).start();
                ArrowBatches batches = FhirBulkArrow.batches(export, allocator)) {
            batches.forEachRemaining(kept::add);
        }
        try {
            Map<String, Integer> ids = new TreeMap<>();
            for (ArrowBatch b : kept) {
                addIds(b.resourceType(), b.root(), ids);
            }
            assertEquals(sb.truth("group", "g1", String.join(",", TYPES)), countsByType(ids));
            assertTrue(allocator.getAllocatedMemory() > 0, "the batches' buffers are accounted to the allocator");
        } finally {
            kept.forEach(ArrowBatch::close);
        }
    }

    @Test
    void recordsReadAsArrowAreNotSeenByTheRecordIterator(Sandbox sb) throws Exception {
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g2").types(TYPES).start()) {
            long rows = 0;
            try (ArrowBatches batches = FhirBulkArrow.batches(export, allocator, 1000)) {
                for (ArrowBatch b : batches) {
                    try (b) {
                        rows += b.rowCount();
                    }
                }
            }
            assertFalse(export.iterator().hasNext());
            assertEquals(sb.truth("group", "g2", String.join(",", TYPES)).values().stream()
                    .mapToLong(Long::longValue).sum(), rows);
        }
    }

    @Test
    void errorAndDeletedRecordsAreSkipped(Sandbox sb) throws Exception {
        String since = "2000-01-01T00:00:00Z"; // the sandbox lists deletions for incremental exports
        Map<String, Long> truth = new TreeMap<>(Json.parseObject(sb.get(
                "/_sandbox/truth?level=group&group=g1&_type=Patient,Observation&_since=" + since))
                .entrySet().stream().collect(java.util.stream.Collectors.toMap(Map.Entry::getKey, e -> (Long) e.getValue())));
        Map<String, Integer> ids = new TreeMap<>();
        try (Export export = FhirBulk.export(sb.url("polls=0;errors;deleted=3")).group("g1").types(TYPES)
                .since(java.time.Instant.parse(since)).start();
                ArrowBatches batches = FhirBulkArrow.batches(export, allocator)) {
            for (ArrowBatch b : batches) {
                try (b) {
                    addIds(b.resourceType(), b.root(), ids);
                }
            }
            String files = export.files();
            assertTrue(files.contains("\"kind\":\"error\"") && files.contains("\"kind\":\"deleted\""), files);
        }
        assertEquals(truth, countsByType(ids));
    }

    // ---- a reader per type ----------------------------------------------------------------------

    @Test
    void aReaderPerTypeGivesThatTypesRecords(Sandbox sb) throws Exception {
        Map<String, Integer> want = recordIds(FhirBulk.export(sb.url("polls=0")).group("g1").types(TYPES));
        Map<String, Integer> got = new TreeMap<>();
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types(TYPES).start()) {
            // Observation first: the Patient batches that come meanwhile are held for theirs.
            for (String type : new String[] {"Observation", "Patient"}) {
                try (ArrowReader reader = FhirBulkArrow.reader(export, type, allocator, 30)) {
                    VectorSchemaRoot root = reader.getVectorSchemaRoot();
                    assertEquals(FhirBulkArrow.schema(type, allocator), root.getSchema());
                    int batches = 0;
                    while (reader.loadNextBatch()) {
                        assertTrue(root.getRowCount() > 0 && root.getRowCount() <= 30, "" + root.getRowCount());
                        addIds(type, root, got);
                        batches++;
                    }
                    assertTrue(batches > 1, type + ": " + batches + " batches");
                    assertFalse(reader.loadNextBatch(), "stays at the end");
                }
            }
        }
        assertEquals(want, got);
    }

    @Test
    void aReaderAfterCloseThrowsCancelledAndNewReadsAreRefused(Sandbox sb) throws Exception {
        Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types(TYPES).start();
        try (ArrowReader reader = FhirBulkArrow.reader(export, "Patient", allocator, 10)) {
            assertTrue(reader.loadNextBatch());
            assertEquals(10, reader.getVectorSchemaRoot().getRowCount());
            export.close();
            CancelledException e = assertThrows(CancelledException.class, reader::loadNextBatch);
            assertTrue(e.getCause() != null && e.getCause().getMessage().contains("freed"), String.valueOf(e.getCause()));
        }
        assertThrows(IllegalStateException.class, () -> FhirBulkArrow.reader(export, "Patient", allocator));
        assertThrows(IllegalStateException.class, () -> FhirBulkArrow.batches(export, allocator));
    }

    // ---- errors, cancel, close ----------------------------------------------------------------

    @Test
    void aLineOfAnotherTypeIsAProtocolError(Sandbox sb) throws Exception {
        // long_line: each output file gets a Basic resource line (not of its file's type).
        String url = sb.url("polls=0;long_line=300");
        try (Export export = FhirBulk.export(url).group("g1").types("Patient").start();
                ArrowBatches batches = FhirBulkArrow.batches(export, allocator)) {
            ProtocolException e = assertThrows(ProtocolException.class, () -> {
                for (ArrowBatch b : batches) {
                    b.close();
                }
            });
            assertTrue(e.getMessage().matches("(?s).*file \\d+ line \\d+: .*Basic.*"), e.getMessage());
            assertEquals(202, e.code());
        }
        try (Export export = FhirBulk.export(url).group("g1").types("Patient").start();
                ArrowReader reader = FhirBulkArrow.reader(export, "Patient", allocator)) {
            ProtocolException e = assertThrows(ProtocolException.class, () -> {
                while (reader.loadNextBatch()) {
                    // drain
                }
            });
            assertTrue(e.getMessage().matches("(?s)file \\d+ line \\d+: .*Basic.*"), e.getMessage());
        }
    }

    @Test
    void aFailedExportThrowsItsException(Sandbox sb) throws Exception {
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("no-such-group").start()) {
            try (ArrowBatches batches = FhirBulkArrow.batches(export, allocator)) {
                NotFoundException e = assertThrows(NotFoundException.class, batches::hasNext);
                assertEquals(404, e.httpStatus());
                assertTrue(e.getMessage().contains("unknown Group/no-such-group"), e.getMessage());
            }
        }
        try (Export export = FhirBulk.export(sb.url("kickoff=500")).group("g1").types("Patient")
                .option("retry_max_attempts", 1).start();
                ArrowReader reader = FhirBulkArrow.reader(export, "Patient", allocator)) {
            ServerException e = assertThrows(ServerException.class, reader::loadNextBatch);
            assertEquals(500, e.httpStatus());
        }
    }

    @Test
    void badArgumentsAreRefused(Sandbox sb) {
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient").start()) {
            assertThrows(IllegalArgumentException.class, () -> FhirBulkArrow.batches(export, allocator, 0));
            assertThrows(IllegalArgumentException.class, () -> FhirBulkArrow.reader(export, "Patient", allocator, -1));
            assertThrows(IllegalArgumentException.class, () -> FhirBulkArrow.reader(export, "", allocator));
        }
    }

    @Test
    void closingTheExportInTheLoopEndsItWithCancelled(Sandbox sb) throws Exception {
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types(TYPES).start();
                ArrowBatches batches = FhirBulkArrow.batches(export, allocator, 10)) {
            ArrowBatch first = batches.next();
            export.close();
            try (first) {
                assertEquals(10, first.rowCount()); // still readable
                addIds(first.resourceType(), first.root(), new HashMap<>());
            }
            assertThrows(CancelledException.class, batches::hasNext);
        }
    }

    @Test
    void cancelFromAnotherThreadEndsBothLoops(Sandbox sb) throws Exception {
        long total = sb.truth("group", "g1", String.join(",", TYPES)).values().stream().mapToLong(Long::longValue).sum();
        ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor();
        try {
            for (boolean stream : new boolean[] {false, true}) {
                long rows = 0;
                long t0 = System.nanoTime();
                try (Export export = FhirBulk.export(sb.url("polls=0;slow=2000")).group("g1").types(TYPES).start()) {
                    timer.schedule(export::cancel, 500, TimeUnit.MILLISECONDS);
                    if (stream) {
                        try (ArrowReader reader = FhirBulkArrow.reader(export, "Observation", allocator)) {
                            CancelledException e = assertThrows(CancelledException.class, () -> {
                                while (reader.loadNextBatch()) {
                                    // drain
                                }
                            });
                            assertTrue(e.getMessage().contains("cancelled"), e.getMessage());
                        }
                    } else {
                        try (ArrowBatches batches = FhirBulkArrow.batches(export, allocator)) {
                            assertThrows(CancelledException.class, () -> {
                                for (ArrowBatch b : batches) {
                                    b.close();
                                }
                            });
                            rows = batches.rows();
                        }
                    }
                    assertEquals(Progress.State.CANCELLED, export.progress().state());
                }
                long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                assertTrue(ms < 5000, "ended in " + ms + " ms");
                assertTrue(rows < total);
            }
        } finally {
            timer.shutdownNow();
        }
    }

    @Test
    void anInterruptedWaitThrowsCancelledAndKeepsTheFlag(Sandbox sb) throws Exception {
        try (Export export = FhirBulk.export(sb.url("polls=0;slow=2000")).group("g1").types(TYPES).start();
                ArrowBatches batches = FhirBulkArrow.batches(export, allocator)) {
            Thread.currentThread().interrupt();
            try {
                assertThrows(CancelledException.class, batches::hasNext);
                assertTrue(Thread.currentThread().isInterrupted());
            } finally {
                Thread.interrupted();
            }
        }
    }

    @Test
    void theCoreClassesReferNoArrowClass() throws Exception {
        // Only these classes may mention org.apache.arrow; the record API and the native
        // Parquet writer (FhirBulkParquet) must load without it (BundledJarTest runs both in a JVM
        // whose classpath has no Arrow at all). Nothing mentions parquet-java.
        java.util.Set<String> arrowClasses = java.util.Set.of("ArrowBatch", "ArrowBatches", "ExportArrowReader",
                "FhirBulkArrow");
        java.nio.file.Path dir = java.nio.file.Path.of(FhirBulk.class.getProtectionDomain().getCodeSource()
                .getLocation().toURI()).resolve("org/fhirbulk");
        List<String> offenders = new ArrayList<>();
        try (var files = java.nio.file.Files.list(dir)) {
            for (java.nio.file.Path f : (Iterable<java.nio.file.Path>) files::iterator) {
                String name = f.getFileName().toString();
                if (!name.endsWith(".class")) {
                    continue;
                }
                String outer = name.substring(0, name.length() - 6).split("\\$")[0];
                String bytes = new String(java.nio.file.Files.readAllBytes(f), java.nio.charset.StandardCharsets.ISO_8859_1);
                if ((!arrowClasses.contains(outer) && bytes.contains("org/apache/arrow"))
                        || bytes.contains("org/apache/parquet") || bytes.contains("org/apache/hadoop")) {
                    offenders.add(name);
                }
            }
        }
        assertEquals(List.of(), offenders);
        assertTrue(java.nio.file.Files.isRegularFile(dir.resolve("FhirBulkParquet.class")));
    }
}
