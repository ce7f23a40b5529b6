package org.fhirbulk;

import org.apache.arrow.vector.VectorSchemaRoot;

/**
 * One Arrow record batch of an export ({@link ArrowBatches}): up to {@code maxRows} resources,
 * all of {@link #resourceType()}, in the schema {@link FhirBulkArrow#schema} gives for that type.
 *
 * <p>The batch owns its {@link VectorSchemaRoot} (imported through the Arrow C Data Interface
 * without a copy; the buffers stay in native memory owned by libfhirbulk until the root is
 * closed, and are accounted to the allocator it was imported with). It is independent of the
 * export and of the other batches: keep it as long as you need, on any thread, even after the
 * export was closed — and close it (this closes the root) when done, or the allocator reports
 * a leak when it closes.
 *
 * @param resourceType the FHIR resource type of every row ({@code "Observation"})
 * @param root         the rows: one column per element of the type, then {@code _remainder}
 */
public record ArrowBatch(String resourceType, VectorSchemaRoot root) implements AutoCloseable {
    /** The number of rows. */
    public int rowCount() {
        return root.getRowCount();
    }

    /** Closes the root: its memory goes back (the native buffers are released). */
    @Override
    public void close() {
        root.close();
    }

    @Override
    public String toString() {
        return "ArrowBatch[" + resourceType + ", " + root.getRowCount() + " rows]";
    }
}
