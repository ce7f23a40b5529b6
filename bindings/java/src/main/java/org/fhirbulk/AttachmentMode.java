package org.fhirbulk;

import java.util.Locale;

/**
 * What an export does with the attachments of the records of {@link ExportBuilder#attachmentTypes
 * attachmentTypes} ({@code DocumentReference.content[].attachment},
 * {@code DiagnosticReport.presentedForm[]}, ...) that link their document by {@code url}: the
 * config key {@code attachments}.
 */
public enum AttachmentMode {
    /** Leave them as they are (the default): records arrive as the server wrote them. */
    NONE,
    /**
     * Fetch each document and deliver the record with it inline, in {@code attachment.data}
     * (base64), with {@code size} and {@code hash} filled when absent and checked when present.
     */
    INLINE,
    /**
     * Fetch each document and deliver it as a record of its own ({@link Kind#ATTACHMENT}, the
     * bytes in {@link BulkRecord#content()}) right before the record that links it, whose
     * {@code attachment.url} becomes the relative path {@link AttachmentInfo#file()}.
     */
    SAVE;

    /** The config value: {@code "none"}, {@code "inline"}, {@code "save"}. */
    String configValue() {
        return name().toLowerCase(Locale.ROOT);
    }
}
