package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.channels.Channels;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
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
import org.apache.parquet.io.RecordReader;
import org.apache.parquet.schema.GroupType;
import org.apache.parquet.schema.LogicalTypeAnnotation;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.Type;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.io.TempDir;

/**
 * FhirBulkParquet: an export of every type into Parquet files whose rows equal, value by value,
 * the Arrow batches of the same export; the Arrow schema travels along; failures leave no file.
 * (Read back with parquet-java; that BundledJarTest writes without Hadoop on the class path.)
 */
@ExtendWith(SandboxExtension.class)
@Timeout(60)
class ParquetTest {
    BufferAllocator allocator;

    @BeforeEach
    void allocator() {
        allocator = new RootAllocator();
    }

    @AfterEach
    void nothingLeft() {
        assertEquals(0, allocator.getAllocatedMemory(), "memory left in the allocator");
        allocator.close();
    }

    @Test
    void everyTypeGoesIntoItsFileValueByValue(Sandbox sb, @TempDir Path dir) throws Exception {
        Map<String, Long> truth = sb.truth("system", null, null);
        // What the Arrow batches hold, row by row, as plain values (nulls left out).
        Map<String, Object> want = new TreeMap<>();
        try (Export export = FhirBulk.export(sb.url("polls=0")).system().start();
                ArrowBatches batches = FhirBulkArrow.batches(export, allocator, 100)) {
            for (ArrowBatch b : batches) {
                try (b) {
                    addArrowRows(b.resourceType(), b.root(), want);
                }
            }
        }
        Map<String, Long> rows;
        try (Export export = FhirBulk.export(sb.url("polls=0")).system().start()) {
            // Small batches: several row groups per file.
            rows = FhirBulkParquet.write(export, dir, allocator, 100, CompressionCodecName.ZSTD);
        }
        assertEquals(truth, rows);
        List<String> names = new ArrayList<>();
        try (Stream<Path> s = Files.list(dir)) {
            s.forEach(p -> names.add(p.getFileName().toString()));
        }
        names.sort(null);
        assertEquals(truth.keySet().stream().map(t -> t + ".parquet").sorted().toList(), names, "no partial file left");

        Map<String, Object> got = new TreeMap<>();
        for (String type : truth.keySet()) {
            Path file = dir.resolve(type + ".parquet");
            try (ParquetFileReader r = open(file)) {
                Map<String, String> kv = r.getFooter().getFileMetaData().getKeyValueMetaData();
                assertEquals(type, kv.get("fhir.resourceType"));
                // The Arrow schema, as Arrow C++ and pyarrow store it: exactly the type's.
                Schema stored = MessageSerializer.deserializeSchema(new ReadChannel(Channels.newChannel(
                        new java.io.ByteArrayInputStream(Base64.getDecoder().decode(kv.get("ARROW:schema"))))));
                assertEquals(FhirBulkArrow.schema(type, allocator), stored);
                MessageType schema = r.getFooter().getFileMetaData().getSchema();
                assertTrue(r.getRowGroups().size() > 1 || truth.get(type) <= 100, type + ": row groups");
                assertEquals((long) truth.get(type), r.getRecordCount());
                if (type.equals("Patient")) {
                    GroupType name = schema.getType("name").asGroupType();
                    assertEquals(LogicalTypeAnnotation.listType(), name.getLogicalTypeAnnotation());
                    assertEquals(Type.Repetition.REPEATED, name.getType("list").getRepetition());
                    assertEquals(LogicalTypeAnnotation.stringType(),
                            schema.getType("id").asPrimitiveType().getLogicalTypeAnnotation());
                }
                PageReadStore rg;
                while ((rg = r.readNextRowGroup()) != null) {
                    RecordReader<Group> rr = new ColumnIOFactory().getColumnIO(schema)
                            .getRecordReader(rg, new GroupRecordConverter(schema));
                    for (long i = 0; i < rg.getRowCount(); i++) {
                        @SuppressWarnings("unchecked")
                        Map<String, Object> row = (Map<String, Object>) value(rr.read(), schema);
                        Object prev = got.put(type + "/" + row.get("id"), row);
                        assertEquals(null, prev, "twice: " + type + "/" + row.get("id"));
                    }
                }
            }
        }
        assertEquals(want.keySet(), got.keySet());
        for (String k : want.keySet()) {
            assertEquals(want.get(k), got.get(k), k);
        }
    }

    @Test
    void aFailedExportLeavesNoFile(Sandbox sb, @TempDir Path dir) throws Exception {
        // long_line: each output file gets a Basic resource line (not of its file's type).
        try (Export export = FhirBulk.export(sb.url("polls=0;long_line=300")).group("g1").types("Patient").start()) {
            assertThrows(ProtocolException.class, () -> FhirBulkParquet.write(export, dir, allocator));
        }
        try (Stream<Path> s = Files.list(dir)) {
            assertEquals(List.of(), s.toList());
        }
        try (Export export = FhirBulk.export(sb.url("polls=0;slow=2000")).group("g1").types("Patient", "Observation")
                .start()) {
            new Thread(() -> {
                try {
                    Thread.sleep(500);
                } catch (InterruptedException e) {
                    return;
                }
                export.cancel();
            }).start();
            assertThrows(CancelledException.class, () -> FhirBulkParquet.write(export, dir, allocator, 10,
                    CompressionCodecName.SNAPPY));
        }
        try (Stream<Path> s = Files.list(dir)) {
            assertEquals(List.of(), s.toList());
        }
    }

    @Test
    void everyCodecWritesAFileThatReadsBack(Sandbox sb, @TempDir Path dir) throws Exception {
        long patients = sb.truth("group", "g2", "Patient").get("Patient");
        for (CompressionCodecName codec : new CompressionCodecName[] {CompressionCodecName.UNCOMPRESSED,
                CompressionCodecName.SNAPPY, CompressionCodecName.ZSTD, CompressionCodecName.GZIP}) {
            Path out = dir.resolve(codec.name());
            try (Export export = FhirBulk.export(sb.url("polls=0")).group("g2").types("Patient").start()) {
                assertEquals(Map.of("Patient", patients), FhirBulkParquet.write(export, out, allocator, 1000, codec));
            }
            try (ParquetFileReader r = open(out.resolve("Patient.parquet"))) {
                assertEquals(codec, r.getRowGroups().get(0).getColumns().get(0).getCodec());
                long n = 0;
                PageReadStore rg;
                while ((rg = r.readNextRowGroup()) != null) {
                    n += rg.getRowCount();
                }
                assertEquals(patients, n);
            }
        }
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g2").types("Patient").start()) {
            assertThrows(IllegalArgumentException.class,
                    () -> FhirBulkParquet.write(export, dir, allocator, 1000, CompressionCodecName.BROTLI));
            assertThrows(IllegalArgumentException.class,
                    () -> FhirBulkParquet.write(export, dir, allocator, 0, CompressionCodecName.SNAPPY));
        }
    }

    // ---- reading back and comparing -----------------------------------------------------------

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

    /** A Parquet group as the same plain values. */
    static Object value(Group g, GroupType type) {
        if (type.getLogicalTypeAnnotation() instanceof LogicalTypeAnnotation.ListLogicalTypeAnnotation) {
            List<Object> out = new ArrayList<>();
            int n = g.getFieldRepetitionCount("list");
            for (int j = 0; j < n; j++) {
                Group item = g.getGroup("list", j);
                GroupType itemType = type.getType("list").asGroupType();
                out.add(item.getFieldRepetitionCount("element") == 0 ? null : field(item, itemType, 0));
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
