package org.fhirbulk;

/** What a record is: which manifest list its file came from, or a document fhirbulk fetched. */
public enum Kind {
    /** A resource from an {@code output} file. */
    OUTPUT,
    /**
     * An OperationOutcome from an {@code error} file, or one fhirbulk made: for an invalid line
     * ({@code on_invalid_line: "skip"}) or for an attachment it could not fetch
     * ({@link BulkRecord#attachmentError()}).
     */
    ERROR,
    /** A Bundle of deletions from a {@code deleted} file. */
    DELETED,
    /**
     * A document an attachment links, fetched by fhirbulk
     * ({@link ExportBuilder#attachments(AttachmentMode) attachments(AttachmentMode.SAVE)}): its
     * bytes are {@link BulkRecord#content()}, its description {@link BulkRecord#attachment()}.
     * It comes right before the record that links it (among its file's records), with that
     * record's resource type, file index and line.
     */
    ATTACHMENT;

    private static final Kind[] VALUES = values();

    static Kind of(int k) {
        return k >= 0 && k < VALUES.length ? VALUES[k] : OUTPUT;
    }
}
