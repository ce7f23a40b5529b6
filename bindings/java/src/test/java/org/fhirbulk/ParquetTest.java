package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.channels.Channels;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Stream;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.FieldVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.ipc.ReadChannel;
import org.apache.arrow.vector.ipc.message.MessageSerializer;
import org.apache.arrow.vector.types.pojo.Schema;
import org.apache.arrow.vector.util.Text;
import org.apache.parquet.ParquetReadOptions;
import org.apache.parquet.column.page.PageReadStore;
import org.apache.parquet.conf.PlainParquetConfiguration;
import org.apache.parquet.example.data.Group;
import org.apache.parquet.example.data.simple.convert.GroupRecordConverter;
import org.apache.parquet.hadoop.ParquetFileReader;
import org.apache.parquet.hadoop.metadata.CompressionCodecName;
import org.apache.parquet.io.ColumnIOFactory;
import org.apache.parquet.io.LocalInputFile;
import org.apache.parquet.io.MessageColumnIO;
import org.apache.parquet.io.RecordReader;
import org.apache.parquet.schema.GroupType;
import org.apache.parquet.schema.LogicalTypeAnnotation;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.Type;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.io.TempDir;

/**
 * FhirBulkParquet, the library's native writer: a system export into a dataset of all 12 types
 * ({@code <dir>/<Type>/part-<n>.parquet}) whose rows, read back with parquet-java, equal the Arrow
 * batches of the same export value by value (so exactly the ids, each once); the Arrow schema
 * travels along; each codec; overwrite refused and allowed; failures, cancel and interrupts leave
 * no part (in progress or closed). BundledJarTest runs the writer without Arrow or parquet-java
 * on the class path.
 */
@ExtendWith(SandboxExtension.class)
@Timeout(60)
class ParquetTest {
    @Test
    void everyTypeGoesIntoItsDatasetValueByValue(Sandbox sb, @TempDir Path dir) throws Exception {
        assertTrue(FhirBulkParquet.available());
        Map<String, Long> truth = sb.truth("system", null, null);
        assertEquals(12, truth.size());
        // What the Arrow batches hold, row by row, as plain values (nulls left out).
        Map<String, Object> want = new TreeMap<>();
        Map<String, Schema> schemas = new TreeMap<>();
        try (BufferAllocator allocator = new RootAllocator()) {
            try (Export export = FhirBulk.export(sb.url("polls=0")).system().start();
                    ArrowBatches batches = FhirBulkArrow.batches(export, allocator, 100)) {
                for (ArrowBatch b : batches) {
                    try (b) {
                        addArrowRows(b.resourceType(), b.root(), want);
                    }
                }
            }
            for (String type : truth.keySet()) {
                schemas.put(type, FhirBulkArrow.schema(type, allocator));
            }
            assertEquals(0, allocator.getAllocatedMemory());
        }
        Map<String, Long> rows;
        try (Export export = FhirBulk.export(sb.url("polls=0")).system().start()) {
            // Small row groups: several per part.
            rows = FhirBulkParquet.write(export, dir, FhirBulkParquet.options()
                    .compression(FhirBulkParquet.Compression.ZSTD).rowGroupRows(100));
        }
        assertEquals(truth, rows);
        assertEquals(List.copyOf(truth.keySet()), List.copyOf(rows.keySet()), "sorted by type");
        assertEquals(List.copyOf(truth.keySet()), names(dir), "a directory per type");

        Map<String, Object> got = new TreeMap<>();
        for (String type : truth.keySet()) {
            List<String> parts = names(dir.resolve(type));
            assertFalse(parts.isEmpty(), type);
            assertTrue(parts.stream().allMatch(n -> n.matches("part-\\d{5}\\.parquet")), "no part in progress: " + parts);
            long n = 0;
            int rowGroups = 0;
            for (String part : parts) {
                try (ParquetFileReader r = open(dir.resolve(type).resolve(part))) {
                    Map<String, String> kv = r.getFooter().getFileMetaData().getKeyValueMetaData();
                    // The Arrow schema, as Arrow C++ and pyarrow store it: exactly the type's.
                    Schema stored = MessageSerializer.deserializeSchema(new ReadChannel(Channels.newChannel(
                            new java.io.ByteArrayInputStream(Base64.getDecoder().decode(kv.get("ARROW:schema"))))));
                    assertEquals(schemas.get(type), stored, type);
                    assertEquals(type, stored.getCustomMetadata().get("fhir.resourceType"));
                    MessageType schema = r.getFooter().getFileMetaData().getSchema();
                    if (type.equals("Patient")) {
                        GroupType name = schema.getType("name").asGroupType();
                        assertEquals(LogicalTypeAnnotation.listType(), name.getLogicalTypeAnnotation());
                        assertEquals(Type.Repetition.REPEATED, name.getType(0).getRepetition());
                        assertEquals(LogicalTypeAnnotation.stringType(),
                                schema.getType("id").asPrimitiveType().getLogicalTypeAnnotation());
                    }
                    assertEquals(CompressionCodecName.ZSTD, r.getRowGroups().get(0).getColumns().get(0).getCodec());
                    rowGroups += r.getRowGroups().size();
                    n += r.getRecordCount();
                    MessageColumnIO io = new ColumnIOFactory().getColumnIO(schema);
                    PageReadStore rg;
                    while ((rg = r.readNextRowGroup()) != null) {
                        assertTrue(rg.getRowCount() <= 100, type + ": a row group of " + rg.getRowCount());
                        RecordReader<Group> rr = io.getRecordReader(rg, new GroupRecordConverter(schema));
                        for (long i = 0; i < rg.getRowCount(); i++) {
                            @SuppressWarnings("unchecked")
                            Map<String, Object> row = (Map<String, Object>) value(rr.read(), schema);
                            Object prev = got.put(type + "/" + row.get("id"), row);
                            assertEquals(null, prev, "twice: " + type + "/" + row.get("id"));
                        }
                    }
                }
            }
            assertEquals((long) truth.get(type), n, type);
            assertTrue(rowGroups >= (truth.get(type) + 99) / 100, type + ": row groups");
        }
        assertEquals(want.keySet(), got.keySet());
        for (String k : want.keySet()) {
            assertEquals(want.get(k), got.get(k), k);
        }
    }

    @Test
    void everyCodecWritesPartsThatReadBack(Sandbox sb, @TempDir Path dir) throws Exception {
        long patients = sb.truth("group", "g2", "Patient").get("Patient");
        Map<FhirBulkParquet.Compression, CompressionCodecName> codecs = Map.of(
                FhirBulkParquet.Compression.NONE, CompressionCodecName.UNCOMPRESSED,
                FhirBulkParquet.Compression.SNAPPY, CompressionCodecName.SNAPPY,
                FhirBulkParquet.Compression.ZSTD, CompressionCodecName.ZSTD);
        for (var c : codecs.entrySet()) {
            Path out = dir.resolve(c.getKey().name());
            try (Export export = FhirBulk.export(sb.url("polls=0")).group("g2").types("Patient").start()) {
                // One thread: one part.
                assertEquals(Map.of("Patient", patients), FhirBulkParquet.write(export, out,
                        FhirBulkParquet.options().compression(c.getKey()).threads(1)));
            }
            assertEquals(List.of("part-00000.parquet"), names(out.resolve("Patient")));
            try (ParquetFileReader r = open(out.resolve("Patient/part-00000.parquet"))) {
                assertEquals(c.getValue(), r.getRowGroups().get(0).getColumns().get(0).getCodec());
                assertEquals(patients, r.getRecordCount());
            }
        }
        // The defaults: Snappy.
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g2").types("Patient").start()) {
            assertEquals(Map.of("Patient", patients), FhirBulkParquet.write(export, dir.resolve("default")));
        }
        for (String part : names(dir.resolve("default/Patient"))) {
            try (ParquetFileReader r = open(dir.resolve("default/Patient").resolve(part))) {
                assertEquals(CompressionCodecName.SNAPPY, r.getRowGroups().get(0).getColumns().get(0).getCodec());
            }
        }
    }

    @Test
    void aDirectoryWithPartsIsRefusedUnlessOverwrite(Sandbox sb, @TempDir Path dir) throws Exception {
        Map<String, Long> g1 = sb.truth("group", "g1", "Patient,Observation");
        Map<String, Long> g2 = sb.truth("group", "g2", "Patient");
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient", "Observation").start()) {
            assertEquals(g1, FhirBulkParquet.write(export, dir));
        }
        List<String> before = names(dir.resolve("Observation"));
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g2").types("Patient").start()) {
            FileAlreadyExistsException e = assertThrows(FileAlreadyExistsException.class,
                    () -> FhirBulkParquet.write(export, dir));
            assertTrue(e.getMessage().contains("overwrite(true)"), e.getMessage());
            assertEquals(before, names(dir.resolve("Observation")), "nothing touched");
            // The export was not consumed: it can still be written.
            assertEquals(g2, FhirBulkParquet.write(export, dir, FhirBulkParquet.options().overwrite(true)));
        }
        assertEquals(List.of("Patient"), names(dir), "the old parts are gone, Observation's with them");
        long n = 0;
        for (String part : names(dir.resolve("Patient"))) {
            try (ParquetFileReader r = open(dir.resolve("Patient").resolve(part))) {
                n += r.getRecordCount();
            }
        }
        assertEquals((long) g2.get("Patient"), n);
    }

    @Test
    void aFailedExportLeavesNoPart(Sandbox sb, @TempDir Path dir) throws Exception {
        // long_line: each output file gets a Basic resource line (not of its file's type).
        try (Export export = FhirBulk.export(sb.url("polls=0;long_line=300")).group("g1").types("Patient").start()) {
            assertThrows(ProtocolException.class, () -> FhirBulkParquet.write(export, dir));
        }
        assertEquals(List.of(), names(dir));
    }

    /** A slow export (one file at a time) in small batches: parts are in progress for seconds. */
    static Export slowExport(Sandbox sb) {
        return FhirBulk.export(sb.url("polls=0;slow=300")).system().option("concurrency", 1).start();
    }

    static final FhirBulkParquet.Options SMALL_BATCHES = FhirBulkParquet.options().batchRows(10);

    /** Waits until a part is in progress under dir. */
    static boolean partInProgress(Path dir) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (System.nanoTime() < deadline) {
            if (!FhirBulkParquet.inProgressParts(dir).isEmpty()) {
                return true;
            }
            Thread.sleep(10);
        }
        return false;
    }

    @Test
    void cancelOrCloseFromAnotherThreadLeavesNoPart(Sandbox sb, @TempDir Path dir) throws Exception {
        for (String how : List.of("cancel", "close")) {
            Path out = dir.resolve(how);
            try (Export export = slowExport(sb)) {
                CompletableFuture<Boolean> seen = CompletableFuture.supplyAsync(() -> {
                    try {
                        boolean s = partInProgress(out);
                        if (how.equals("cancel")) {
                            export.cancel();
                        } else {
                            export.close();
                        }
                        return s;
                    } catch (Exception e) {
                        throw new IllegalStateException(e);
                    }
                });
                long t0 = System.nanoTime();
                assertThrows(CancelledException.class, () -> FhirBulkParquet.write(export, out, SMALL_BATCHES));
                assertTrue(seen.get(10, TimeUnit.SECONDS), how + ": no part in progress to cancel");
                assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(15), how);
            }
            assertEquals(List.of(), names(out), how);
        }
    }

    @Test
    void anInterruptStopsTheWriteClosesTheExportAndLeavesNoPart(Sandbox sb, @TempDir Path dir) throws Exception {
        try (Export export = slowExport(sb)) {
            AtomicReference<Throwable> thrown = new AtomicReference<>();
            AtomicReference<Boolean> flag = new AtomicReference<>();
            Thread writer = new Thread(() -> {
                try {
                    FhirBulkParquet.write(export, dir, SMALL_BATCHES);
                } catch (Throwable t) {
                    thrown.set(t);
                }
                flag.set(Thread.currentThread().isInterrupted());
            });
            writer.start();
            assertTrue(partInProgress(dir), "no part in progress to interrupt");
            long t0 = System.nanoTime();
            writer.interrupt();
            writer.join(5000);
            assertFalse(writer.isAlive());
            assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(2), "stopped promptly");
            assertTrue(thrown.get() instanceof CancelledException, String.valueOf(thrown.get()));
            assertTrue(thrown.get().getMessage().contains("interrupted"), thrown.get().getMessage());
            assertEquals(Boolean.TRUE, flag.get(), "the interrupt flag is set again");
            assertTrue(export.isClosed());
        }
        assertEquals(List.of(), names(dir));
    }

    @Test
    void badOptionsAndUsesAreRefused(Sandbox sb, @TempDir Path dir) throws Exception {
        FhirBulkParquet.Options o = FhirBulkParquet.options();
        for (Runnable bad : List.<Runnable>of(() -> o.threads(0), () -> o.threads(5), () -> o.rowGroupRows(0),
                () -> o.partBytes(0), () -> o.maxOpenParts(0), () -> o.batchRows(0), () -> o.compression(null))) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, bad::run);
            assertTrue(e.getMessage().contains("Parquet option"), e.getMessage());
        }
        assertEquals("FhirBulkParquet.Options{\"compression\":\"zstd\",\"threads\":2,\"overwrite\":true}",
                FhirBulkParquet.options().compression(FhirBulkParquet.Compression.ZSTD).threads(2).overwrite(true)
                        .toString());
        // Records read already would be missing: refused.
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient").start()) {
            assertTrue(export.iterator().hasNext());
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> FhirBulkParquet.write(export, dir.resolve("a")));
            assertTrue(e.getMessage().contains("read already"), e.getMessage());
        }
        try (BufferAllocator allocator = new RootAllocator();
                Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient").start();
                ArrowBatches batches = FhirBulkArrow.batches(export, allocator, 10)) {
            batches.next().close();
            assertThrows(IllegalStateException.class, () -> FhirBulkParquet.write(export, dir.resolve("b")));
        }
        Export closed = FhirBulk.export(sb.url("polls=0")).group("g1").start();
        closed.close();
        assertThrows(IllegalStateException.class, () -> FhirBulkParquet.write(closed, dir.resolve("c")));
        assertThrows(NullPointerException.class, () -> FhirBulkParquet.write(closed, null));
        assertEquals(List.of(), names(dir));
    }

    // ---- reading back and comparing -----------------------------------------------------------

    /** The sorted file names in dir (hidden ones too); empty when it does not exist. */
    static List<String> names(Path dir) throws IOException {
        if (!Files.isDirectory(dir)) {
            return List.of();
        }
        try (Stream<Path> s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        }
    }

    static ParquetFileReader open(Path file) throws IOException {
        return ParquetFileReader.open(new LocalInputFile(file), ParquetReadOptions.builder(new PlainParquetConfiguration())
                .withCodecFactory(new ParquetCodecs()).build());
    }

    /** Each row of a batch as plain values: maps without null entries, lists, strings, ... */
    static void addArrowRows(String type, VectorSchemaRoot root, Map<String, Object> out) {
        for (int i = 0; i < root.getRowCount(); i++) {
            Map<String, Object> row = new LinkedHashMap<>();
            for (FieldVector v : root.getFieldVectors()) {
                Object x = plain(v.getObject(i));
                if (x != null) {
                    row.put(v.getField().getName(), x);
                }
            }
            assertEquals(null, out.put(type + "/" + row.get("id"), row));
        }
    }

    static Object plain(Object x) {
        if (x instanceof Text t) {
            return t.toString();
        }
        if (x instanceof Map<?, ?> m) {
            Map<String, Object> out = new LinkedHashMap<>();
            m.forEach((k, v) -> {
                Object p = plain(v);
                if (p != null) {
                    out.put(String.valueOf(k), p);
                }
            });
            return out;
        }
        if (x instanceof List<?> l) {
            List<Object> out = new ArrayList<>();
            l.forEach(v -> out.add(plain(v)));
            return out;
        }
        return x; // Boolean, Integer, null
    }

    /** A Parquet group as the same plain values (a LIST's repeated group and its item field
     *  whatever their names). */
    static Object value(Group g, GroupType type) {
        if (type.getLogicalTypeAnnotation() instanceof LogicalTypeAnnotation.ListLogicalTypeAnnotation) {
            List<Object> out = new ArrayList<>();
            int n = g.getFieldRepetitionCount(0);
            GroupType itemType = type.getType(0).asGroupType();
            for (int j = 0; j < n; j++) {
                Group item = g.getGroup(0, j);
                out.add(item.getFieldRepetitionCount(0) == 0 ? null : field(item, itemType, 0));
            }
            return out;
        }
        Map<String, Object> out = new LinkedHashMap<>();
        for (int f = 0; f < type.getFieldCount(); f++) {
            if (g.getFieldRepetitionCount(f) > 0) {
                out.put(type.getFieldName(f), field(g, type, f));
            }
        }
        return out;
    }

    static Object field(Group g, GroupType type, int f) {
        Type t = type.getType(f);
        if (!t.isPrimitive()) {
            return value(g.getGroup(f, 0), t.asGroupType());
        }
        return switch (t.asPrimitiveType().getPrimitiveTypeName()) {
            case BINARY -> g.getString(f, 0);
            case BOOLEAN -> g.getBoolean(f, 0);
            case INT32 -> g.getInteger(f, 0);
            case INT64 -> g.getLong(f, 0);
            case DOUBLE -> g.getDouble(f, 0);
            default -> throw new AssertionError("unexpected " + t);
        };
    }
}
