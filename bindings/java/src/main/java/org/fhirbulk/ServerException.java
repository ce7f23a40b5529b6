package org.fhirbulk;

import java.util.List;

/** HTTP 5xx after the retries ran out (code 308, {@code server}). */
public class ServerException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public ServerException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
