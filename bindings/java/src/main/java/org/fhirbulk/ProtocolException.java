package org.fhirbulk;

import java.util.List;

/** The server broke the protocol (code 202, {@code protocol}): malformed manifest, wrong content type, overlong or invalid line. */
public class ProtocolException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public ProtocolException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
