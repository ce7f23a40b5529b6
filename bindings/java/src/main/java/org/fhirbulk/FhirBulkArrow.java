package org.fhirbulk;

import java.nio.charset.StandardCharsets;
import java.util.List;
import org.apache.arrow.c.ArrowArrayStream;
import org.apache.arrow.c.ArrowSchema;
import org.apache.arrow.c.CDataDictionaryProvider;
import org.apache.arrow.c.Data;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.vector.ipc.ArrowReader;
import org.apache.arrow.vector.types.pojo.Schema;

/**
 * An export's resources as Arrow Java record batches, decoded by libfhirbulk (typed columns per
 * FHIR R4 type) and handed over through the Arrow C Data Interface and C Stream Interface
 * without a copy. Needs Arrow Java on the classpath ({@code arrow-c-data}, {@code arrow-vector}
 * and an allocator, {@code arrow-memory-unsafe} or {@code arrow-memory-netty}), and on Java 17+
 * the JVM flag {@code --add-opens=java.base/java.nio=ALL-UNNAMED}; the rest of the binding
 * works without them (no other class refers to Arrow).
 *
 * <pre>{@code
 * try (BufferAllocator allocator = new RootAllocator();
 *      Export export = FhirBulk.export(url).group("g1").types("Patient", "Observation").start()) {
 *     // Every type, batches as they fill:
 *     try (ArrowBatches batches = FhirBulkArrow.batches(export, allocator)) {
 *         for (ArrowBatch b : batches) {
 *             try (b) { use(b.resourceType(), b.root()); }
 *         }
 *     }
 * }
 * // Or one type as an ArrowReader (for Arrow Java consumers, DuckDB's registerArrowStream, ...):
 * try (ArrowReader reader = FhirBulkArrow.reader(export, "Observation", allocator)) {
 *     while (reader.loadNextBatch()) { use(reader.getVectorSchemaRoot()); }
 * }
 * }</pre>
 *
 * <p><b>Schemas.</b> {@link #schema} gives a type's schema, the same for every batch of every
 * export: one field per element in the specification's order (nested structs and lists, choice
 * elements as one field per type, {@code valueQuantity}, {@code valueString}, ...), decimals as
 * their exact JSON text in utf8 fields with field metadata {@code fhir.type=decimal}, then
 * {@code _remainder}, a utf8 column holding as JSON whatever the columns cannot hold (null when
 * nothing is left); schema metadata {@code fhir.resourceType}.
 *
 * <p><b>Ownership.</b> The C structs are allocated from the caller's {@link BufferAllocator}
 * ({@code ArrowArray.allocateNew}, ...), filled by the library and imported at once, which
 * moves their content into Arrow Java; the structs themselves are closed before the call
 * returns. Imported buffers stay in libfhirbulk's native memory, accounted to the allocator,
 * until the vectors are closed: close each {@link ArrowBatch} and each {@link ArrowReader}
 * before the allocator. None of them depends on the {@link Export} staying open.
 */
public final class FhirBulkArrow {
    /** Rows per record batch unless told otherwise (as the Python binding). */
    public static final int DEFAULT_BATCH_ROWS = 65536;
    /** The column of what the typed columns do not hold (JSON text, null when nothing is left). */
    public static final String REMAINDER = "_remainder";

    private FhirBulkArrow() {}

    /** Whether the loaded libfhirbulk was built with Arrow support (cargo feature {@code arrow};
     *  the jar's library always is). */
    public static boolean available() {
        return LibFhirBulk.fhirbulk_has_arrow() != 0;
    }

    /**
     * The Arrow schema of a FHIR R4 resource type ({@code fhirbulk_arrow_schema}). A type FHIR
     * R4 does not define has only {@code id} and the remainder.
     *
     * @param allocator for the C struct of the import (nothing stays allocated)
     * @throws IllegalArgumentException for an empty name or one with a NUL
     */
    public static Schema schema(String resourceType, BufferAllocator allocator) {
        byte[] name = typeName(resourceType);
        checkArrow();
        try (ArrowSchema c = ArrowSchema.allocateNew(allocator);
                CDataDictionaryProvider dictionaries = new CDataDictionaryProvider()) {
            int status = LibFhirBulk.fhirbulk_arrow_schema(name, c.memoryAddress());
            if (status != LibFhirBulk.OK) {
                throw FhirBulkException.fromLastError(status, 0L);
            }
            return Data.importSchema(allocator, c, dictionaries); // releases the C schema
        }
    }

    /** {@link #batches(Export, BufferAllocator, int)} with {@link #DEFAULT_BATCH_ROWS}. */
    public static ArrowBatches batches(Export export, BufferAllocator allocator) {
        return batches(export, allocator, DEFAULT_BATCH_ROWS);
    }

    /**
     * The rest of the export as record batches of every type, as they fill
     * ({@code export_next_arrow_batch}); see {@link ArrowBatches}. Memory is bounded: the
     * library holds at most a batch in the making per type and decode thread.
     *
     * @param maxRows rows per batch, at least 1 (the first pull's value holds for the export)
     * @throws IllegalStateException    when the export is closed
     * @throws IllegalArgumentException when {@code maxRows < 1}
     */
    public static ArrowBatches batches(Export export, BufferAllocator allocator, int maxRows) {
        rows(maxRows);
        checkArrow();
        if (export.isClosed()) {
            throw new IllegalStateException("fhirbulk: export closed: start a new export to read it as Arrow");
        }
        return new ArrowBatches(export, allocator, maxRows);
    }

    /** {@link #reader(Export, String, BufferAllocator, int)} with {@link #DEFAULT_BATCH_ROWS}. */
    public static ArrowReader reader(Export export, String resourceType, BufferAllocator allocator) {
        return reader(export, resourceType, allocator, DEFAULT_BATCH_ROWS);
    }

    /**
     * One resource type's batches as an {@link ArrowReader} over the library's C stream
     * ({@code export_arrow_stream}, imported with {@code Data.importArrayStream}). The reader
     * owns the stream and its {@link ArrowReader#getVectorSchemaRoot() root} (reloaded by each
     * {@link ArrowReader#loadNextBatch()}): close the reader. Its schema is
     * {@link #schema(String, BufferAllocator)}.
     *
     * <p>{@code loadNextBatch} waits for the export without a timeout and without seeing
     * interrupts: {@link Export#cancel()} or {@link Export#close()} from another thread ends
     * the wait (it throws {@link CancelledException}); a failed export throws its
     * {@link FhirBulkException}. Batches of other types that come meanwhile are held by the
     * library for their own readers (or {@link #batches}) until taken: for bounded memory, read
     * an export of several types with {@link #batches}, or with one reader per type, each on
     * its own thread. The reader stays safe to use after the export was closed (it throws
     * {@link CancelledException}). One thread at a time per reader.
     *
     * @throws IllegalStateException    when the export is closed
     * @throws IllegalArgumentException for a bad type name or {@code maxRows < 1}
     */
    public static ArrowReader reader(Export export, String resourceType, BufferAllocator allocator, int maxRows) {
        byte[] name = typeName(resourceType);
        rows(maxRows);
        checkArrow();
        ArrowArrayStream c = ArrowArrayStream.allocateNew(allocator);
        boolean filled = false;
        try {
            export.openArrowStream(name, maxRows, c.memoryAddress());
            filled = true;
            ArrowReader stream = Data.importArrayStream(allocator, c); // moves the stream
            filled = false;
            return new ExportArrowReader(allocator, export, stream);
        } finally {
            if (filled) {
                c.release();
            }
            c.close();
        }
    }

    // ---- helpers ----------------------------------------------------------------------------

    static void checkArrow() {
        if (!available()) {
            throw new FhirBulkException(LibFhirBulk.ERR_INVALID_ARGUMENT, "invalid_argument", 0, null,
                    "fhirbulk: this libfhirbulk (" + LibFhirBulk.LOCATION + ") was built without Arrow support "
                            + "(cargo feature `arrow`); use the jar's library or one built with --features arrow",
                    List.of());
        }
    }

    static byte[] typeName(String resourceType) {
        if (resourceType == null || resourceType.isEmpty() || resourceType.indexOf('\0') >= 0) {
            throw new IllegalArgumentException("fhirbulk: a FHIR resource type name is needed, not "
                    + (resourceType == null ? "null" : "\"" + resourceType + "\""));
        }
        byte[] utf8 = resourceType.getBytes(StandardCharsets.UTF_8);
        byte[] out = new byte[utf8.length + 1];
        System.arraycopy(utf8, 0, out, 0, utf8.length);
        return out;
    }

    static void rows(int maxRows) {
        if (maxRows < 1) {
            throw new IllegalArgumentException("fhirbulk: maxRows must be at least 1, not " + maxRows);
        }
    }
}
