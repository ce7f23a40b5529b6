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
 * {@link #length()}, {@link #contentLength()}) stays readable forever.
 *
 * <p><b>Documents.</b> With {@link ExportBuilder#attachments(AttachmentMode)
 * attachments(AttachmentMode.SAVE)}, a document an attachment links arrives as a record of kind
 * {@link Kind#ATTACHMENT} right before the record that links it (with that record's resource
 * type, file index and line; records of other files may come in between): its JSON is the
 * document's description ({@link #attachment()}), its bytes are {@link #content()} /
 * {@link #contentBuffer()}, under the same lifetime rule. A document that could not be fetched
 * gives an {@link Kind#ERROR} record in the same place, with the linking record's file index and
 * line ({@link #attachmentError()} says which attachment).
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
    /** FHIRBULK_KIND_ATTACHMENT: the native address and length of the document; else 0. */
    private final long contentAddr;
    private final long contentLength;

    BulkRecord(Export.Batch batch, int offset, int length, String resourceType, Kind kind, int fileIndex,
            long line, long contentAddr, long contentLength) {
        this.batch = batch;
        this.offset = offset;
        this.length = length;
        this.resourceType = resourceType;
        this.kind = kind;
        this.fileIndex = fileIndex;
        this.line = line;
        this.contentAddr = contentAddr;
        this.contentLength = contentLength;
    }

    /** Output, error (OperationOutcome), deleted (Bundle) or attachment (a document) record. */
    public Kind kind() {
        return kind;
    }

    /** The resource type: the manifest's, or the line's own when the file has none (for an
     *  {@link Kind#ATTACHMENT} record, the type of the record that links the document; for the
     *  error record of a document that could not be fetched, {@code OperationOutcome}). */
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

    // ---- documents (Kind.ATTACHMENT) --------------------------------------------------------

    /** The length in bytes of the document of an {@link Kind#ATTACHMENT} record; 0 for other kinds. */
    public long contentLength() {
        return contentLength;
    }

    /**
     * The document's bytes (a copy) for an {@link Kind#ATTACHMENT} record; {@code null} for
     * every other kind.
     *
     * @throws IllegalStateException when the iteration has moved past this record
     */
    public byte[] content() {
        if (kind != Kind.ATTACHMENT) {
            return null;
        }
        return batch.content(contentAddr, contentLength);
    }

    /**
     * The document's bytes in native memory for an {@link Kind#ATTACHMENT} record: a read-only
     * view, no copy ({@code null} for every other kind). Read it before the iteration moves on
     * and never after the export is closed, as {@link #buffer()}.
     *
     * @throws IllegalStateException when the iteration has already moved past this record
     */
    public ByteBuffer contentBuffer() {
        if (kind != Kind.ATTACHMENT) {
            return null;
        }
        return batch.contentView(contentAddr, contentLength);
    }

    /**
     * The description of the document of an {@link Kind#ATTACHMENT} record (its JSON, parsed):
     * which record and attachment it belongs to, its URL, content type, size, SHA-1 and the
     * relative file name the linking record now names; {@code null} for every other kind.
     *
     * @throws IllegalStateException when the iteration has moved past this record
     */
    public AttachmentInfo attachment() {
        return kind == Kind.ATTACHMENT ? AttachmentInfo.parse(json()) : null;
    }

    /**
     * For an {@link Kind#ERROR} record fhirbulk made because it could not fetch an attachment's
     * document: which attachment, and why; {@code null} for every other record.
     *
     * @throws IllegalStateException when the iteration has moved past this record
     */
    public AttachmentError attachmentError() {
        return kind == Kind.ERROR ? AttachmentError.parse(json()) : null;
    }

    @Override
    public String toString() {
        return "BulkRecord[" + resourceType + " " + kind.name().toLowerCase(java.util.Locale.ROOT) + ", file "
                + fileIndex + " line " + line + ", " + length + " bytes"
                + (kind == Kind.ATTACHMENT ? ", document " + contentLength + " bytes" : "") + "]";
    }
}
