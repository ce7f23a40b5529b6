package org.fhirbulk;

import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Iterator;
import java.util.Map;
import java.util.NoSuchElementException;
import org.apache.arrow.c.ArrowArray;
import org.apache.arrow.c.ArrowSchema;
import org.apache.arrow.c.CDataDictionaryProvider;
import org.apache.arrow.c.Data;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.types.pojo.Schema;

/**
 * The rest of an export as Arrow record batches of every resource type, as they fill
 * ({@link FhirBulkArrow#batches}): {@code export_next_arrow_batch} in the pull loop of the
 * record iteration.
 *
 * <pre>{@code
 * try (BufferAllocator allocator = new RootAllocator();
 *      Export export = FhirBulk.export(url).group("g1").start();
 *      ArrowBatches batches = FhirBulkArrow.batches(export, allocator)) {
 *     for (ArrowBatch batch : batches) {
 *         try (batch) {
 *             use(batch.resourceType(), batch.root());
 *         }
 *     }
 * }
 * }</pre>
 *
 * <p><b>Order.</b> Each batch holds rows of one type; a type's batch comes when it has
 * {@code maxRows} rows, and at the end each decode thread of the library (up to 4) hands out what
 * it holds, so a type's last few batches can be short. Batches of different types interleave;
 * rows of a type come in no particular order. Error and deleted records (manifest {@code error}
 * and {@code deleted} files) are not decoded: they are skipped, and counted in the export's
 * {@link Export#files()}; read them with the record API on another export. Records pulled as
 * Arrow are not seen by the export's record iterator, and the reverse.
 *
 * <p><b>Ownership.</b> Each {@link ArrowBatch} returned by {@link #next()} is the caller's: it
 * owns its {@link VectorSchemaRoot}, stays valid after the next batch, after this object and
 * the export were closed, and must be closed. This object holds no batch the caller has not
 * taken (except one fetched by {@link #hasNext()} and not yet returned, which {@link #close()}
 * closes), plus the dictionary provider of the imports, closed by {@link #close()}.
 *
 * <p><b>Ending.</b> The iteration ends when every record was delivered; it throws the
 * export's {@link FhirBulkException} when the export failed (a {@link ProtocolException} for a
 * line that is not a resource of its file's type), {@link CancelledException} when the export
 * was cancelled or closed, or when the waiting thread was interrupted — the same as the record
 * iteration. One thread at a time consumes it; {@link Export#cancel()} and
 * {@link Export#close()} may come from any thread.
 */
public final class ArrowBatches implements Iterator<ArrowBatch>, Iterable<ArrowBatch>, AutoCloseable {
    /** A resource type name (64 bytes hold every FHIR type). */
    private static final int TYPE_BUF = 256;

    private final Export export;
    private final BufferAllocator allocator;
    private final long maxRows;
    private final byte[] typeBuf = new byte[TYPE_BUF];
    /** A type's schema is the same for every batch: imported once. */
    private final Map<String, Schema> schemas = new HashMap<>();
    private final CDataDictionaryProvider dictionaries = new CDataDictionaryProvider();
    private ArrowBatch fetched;
    private boolean end;
    private boolean closed;
    private boolean iterated;
    private long rows;
    private long batches;

    ArrowBatches(Export export, BufferAllocator allocator, int maxRows) {
        this.export = export;
        this.allocator = allocator;
        this.maxRows = maxRows;
    }

    /**
     * This object, for a for-each loop: once.
     *
     * @throws IllegalStateException on a second call
     */
    @Override
    public Iterator<ArrowBatch> iterator() {
        if (iterated) {
            throw new IllegalStateException("fhirbulk: ArrowBatches can be iterated once");
        }
        iterated = true;
        return this;
    }

    /**
     * Whether there is another batch; waits for it (in slices of 200 ms: interrupts and
     * {@link Export#close()} are seen promptly). False after the end and after {@link #close()}.
     *
     * @throws FhirBulkException when the export failed; {@link CancelledException} when it was
     *         cancelled or closed, or the thread interrupted
     */
    @Override
    public boolean hasNext() {
        if (closed) {
            return false;
        }
        if (fetched != null) {
            return true;
        }
        if (end) {
            return false;
        }
        fetched = pull();
        if (fetched == null) {
            end = true;
            return false;
        }
        return true;
    }

    /** The next batch; the caller owns it (close it). */
    @Override
    public ArrowBatch next() {
        if (!hasNext()) {
            throw new NoSuchElementException();
        }
        ArrowBatch b = fetched;
        fetched = null;
        rows += b.rowCount();
        batches++;
        return b;
    }

    /** Rows handed out so far. */
    public long rows() {
        return rows;
    }

    /** Batches handed out so far. */
    public long batches() {
        return batches;
    }

    /** Whether every record was delivered (the iteration reached the end). */
    public boolean isComplete() {
        return end;
    }

    /**
     * Ends the iteration ({@link #hasNext()} is false afterwards) and closes what this object
     * holds. Does not close the export nor the batches handed out. Idempotent.
     */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        ArrowBatch b = fetched;
        fetched = null;
        try {
            if (b != null) {
                b.close();
            }
        } finally {
            dictionaries.close();
        }
    }

    /** One batch, or null at the end. */
    private ArrowBatch pull() {
        ArrowArray array = ArrowArray.allocateNew(allocator);
        ArrowSchema schema;
        try {
            schema = ArrowSchema.allocateNew(allocator);
        } catch (RuntimeException | Error e) {
            array.close();
            throw e;
        }
        boolean arrayFilled = false;
        boolean schemaFilled = false;
        try {
            int status = export.pullArrow(maxRows, array.memoryAddress(), schema.memoryAddress(), typeBuf);
            if (status != LibFhirBulk.RECORD) {
                return null; // END (pullArrow throws for everything else)
            }
            arrayFilled = true;
            schemaFilled = true;
            String type = cString(typeBuf);
            Schema s = schemas.get(type);
            schemaFilled = false;
            if (s == null) {
                s = Data.importSchema(allocator, schema, dictionaries); // releases and closes the C schema
                schemas.put(type, s);
            } else {
                schema.release();
            }
            VectorSchemaRoot root = VectorSchemaRoot.create(s, allocator);
            try {
                Data.importIntoVectorSchemaRoot(allocator, array, root, dictionaries); // moves the array
                arrayFilled = false;
            } catch (RuntimeException | Error e) {
                root.close();
                throw e;
            }
            return new ArrowBatch(type, root);
        } finally {
            // A failure between the pull and the import gives the library its memory back.
            if (arrayFilled) {
                array.release();
            }
            if (schemaFilled) {
                schema.release();
            }
            array.close();
            schema.close();
        }
    }

    private static String cString(byte[] b) {
        int n = 0;
        while (n < b.length && b[n] != 0) {
            n++;
        }
        return new String(b, 0, n, StandardCharsets.UTF_8);
    }

    @Override
    public String toString() {
        return "ArrowBatches[" + batches + " batches, " + rows + " rows" + (end ? ", complete" : "")
                + (closed ? ", closed" : "") + "]";
    }
}
