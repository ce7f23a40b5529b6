package org.fhirbulk;

import java.util.List;
import java.util.Map;

/**
 * Which attachment an {@link Kind#ERROR} record is about, when fhirbulk made it because it could
 * not fetch a document ({@link BulkRecord#attachmentError()}): the OperationOutcome's extension
 * {@value #EXTENSION_URL} and its first issue. The record comes where the document's
 * {@link Kind#ATTACHMENT} record would have, right before the record that links it, whose
 * attachment is left as the server wrote it.
 *
 * @param resource    the record that links the document, e.g. {@code "DocumentReference/123"}
 * @param position    the attachment's position among that record's attachments, from 0
 * @param path        where the attachment sits in the record, e.g. {@code "content[0].attachment"}
 * @param url         the document's URL (without credentials in its query)
 * @param code        the issue's code: {@code "not-found"}, {@code "forbidden"},
 *                    {@code "too-costly"} (larger than {@code attachmentMaxBytes}), {@code "value"}
 *                    (size or hash do not match), {@code "exception"}, ...
 * @param diagnostics the issue's diagnostics: what went wrong, in words
 */
public record AttachmentError(String resource, int position, String path, String url, String code,
        String diagnostics) {

    /** The extension that marks an error record made for an attachment. */
    public static final String EXTENSION_URL = "https://fhirbulk.dev/fhir/StructureDefinition/attachment-error";

    /** The attachment an OperationOutcome is about, or null when it is not such an error. */
    static AttachmentError parse(String json) {
        if (!json.contains(EXTENSION_URL)) {
            return null; // most error records: no parse
        }
        Object parsed;
        try {
            parsed = Json.parse(json);
        } catch (RuntimeException e) {
            return null;
        }
        if (!(parsed instanceof Map<?, ?> oo) || !(oo.get("extension") instanceof List<?> exts)) {
            return null;
        }
        for (Object e : exts) {
            if (!(e instanceof Map<?, ?> ext) || !EXTENSION_URL.equals(ext.get("url"))
                    || !(ext.get("extension") instanceof List<?> subs)) {
                continue;
            }
            String resource = "";
            String path = "";
            String url = "";
            long position = -1;
            for (Object s : subs) {
                if (!(s instanceof Map<?, ?> sub)) {
                    continue;
                }
                Object name = sub.get("url");
                if ("position".equals(name) && sub.get("valueInteger") instanceof Number n) {
                    position = n.longValue();
                } else if (sub.get("valueString") instanceof String v) {
                    if ("resource".equals(name)) {
                        resource = v;
                    } else if ("path".equals(name)) {
                        path = v;
                    } else if ("url".equals(name)) {
                        url = v;
                    }
                }
            }
            String code = "";
            String diagnostics = "";
            if (oo.get("issue") instanceof List<?> issues && !issues.isEmpty()
                    && issues.get(0) instanceof Map<?, ?> issue) {
                code = issue.get("code") instanceof String c ? c : "";
                diagnostics = issue.get("diagnostics") instanceof String d ? d : "";
            }
            return new AttachmentError(resource, (int) position, path, url, code, diagnostics);
        }
        return null;
    }
}
