package org.fhirbulk;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * One NDJSON line of an export: a FHIR resource as JSON, with where it came from.
 *
 * <p><b>Lifetime.</b> A record is a view of native memory owned by its {@link Export}. It is
 * valid while it is the iteration's current record — until the iteration moves on (the next
 * {@code hasNext()}/{@code next()} may fetch the next batch and release this one) or the export
 * is closed. {@link #json()} and {@link #bytes()} copy: call them while the record is valid and
 * keep the copies as long as you like; afterwards they throw {@link IllegalStateException}.
 * {@link #buffer()} does not copy: its view must not be read after the iteration moved on.
 * The metadata ({@link #kind()}, {@link #resourceType()}, {@link #fileIndex()}, {@link #line()},
 * {@link #length()}) stays readable forever.
 *
 * <p>{@link #toString()} shows the metadata only, never the content.
 */
public final class BulkRecord {
    private final Export.Batch batch;
    private final int offset;
    private final int length;
    private final String resourceType;
    private final Kind kind;
    private final int fileIndex;
    private final long line;

    BulkRecord(Export.Batch batch, int offset, int length, String resourceType, Kind kind, int fileIndex,
            long line) {
        this.batch = batch;
        this.offset = offset;
        this.length = length;
        this.resourceType = resourceType;
        this.kind = kind;
        this.fileIndex = fileIndex;
        this.line = line;
    }

    /** Output, error (OperationOutcome) or deleted (Bundle) record. */
    public Kind kind() {
        return kind;
    }

    /** The resource type: the manifest's, or the line's own when the file has none. */
    public String resourceType() {
        return resourceType;
    }

    /** The file's index in the export's file list ({@link Export#files()}). */
    public int fileIndex() {
        return fileIndex;
    }

    /** The 1-based line number in that file. */
    public long line() {
        return line;
    }

    /** The length of the JSON in bytes (UTF-8). */
    public int length() {
        return length;
    }

    /** The resource as a JSON string (a copy).
     *  @throws IllegalStateException when the iteration has moved past this record */
    public String json() {
        return new String(batch.heap(), offset, length, StandardCharsets.UTF_8);
    }

    /** The resource as UTF-8 JSON bytes (a copy).
     *  @throws IllegalStateException when the iteration has moved past this record */
    public byte[] bytes() {
        return Arrays.copyOfRange(batch.heap(), offset, offset + length);
    }

    /**
     * The resource as UTF-8 JSON bytes in native memory: a read-only slice, no copy. Read it
     * before the iteration moves on and never after the export is closed (the memory is reused
     * or freed then; reading it later gives wrong bytes or crashes the JVM).
     *
     * @throws IllegalStateException when the iteration has already moved past this record
     */
    public ByteBuffer buffer() {
        return batch.slice(offset, length);
    }

    @Override
    public String toString() {
        return "BulkRecord[" + resourceType + " " + kind.name().toLowerCase(java.util.Locale.ROOT) + ", file "
                + fileIndex + " line " + line + ", " + length + " bytes]";
    }
}
