package org.fhirbulk;

import java.util.Map;

/**
 * The description of a document an {@link Kind#ATTACHMENT} record carries
 * ({@link BulkRecord#attachment()}; the record's JSON, parsed).
 *
 * @param resource    the record that links the document, e.g. {@code "DocumentReference/123"}
 * @param position    the attachment's position among that record's attachments, from 0 in
 *                    document order
 * @param path        where the attachment sits in the record, e.g. {@code "content[0].attachment"}
 *                    or {@code "presentedForm[1]"}
 * @param url         the URL the document was fetched from (as the record gave it)
 * @param contentType the document's media type ({@code "application/pdf"}), or "" when unknown
 * @param size        the document's length in bytes ({@link BulkRecord#contentLength()})
 * @param hash        the document's SHA-1, base64 (as FHIR's {@code Attachment.hash})
 * @param file        the relative path the linking record's {@code url} now names
 *                    ({@code attachmentDir} + a file name such as
 *                    {@code "DocumentReference.123.0.pdf"}): where to store the bytes
 */
public record AttachmentInfo(String resource, int position, String path, String url, String contentType,
        long size, String hash, String file) {

    static AttachmentInfo parse(String json) {
        Map<String, Object> m = Json.parseObject(json);
        return new AttachmentInfo(str(m, "resource"), (int) num(m, "position"), str(m, "path"), str(m, "url"),
                str(m, "contentType"), num(m, "size"), str(m, "hash"), str(m, "file"));
    }

    static String str(Map<String, Object> m, String key) {
        Object v = m.get(key);
        return v instanceof String s ? s : "";
    }

    static long num(Map<String, Object> m, String key) {
        Object v = m.get(key);
        return v instanceof Number n ? n.longValue() : -1;
    }
}
