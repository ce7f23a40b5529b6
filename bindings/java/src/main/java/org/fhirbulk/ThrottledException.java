package org.fhirbulk;

import java.util.List;

/** HTTP 429 after the retries ran out (code 307, {@code throttled}); at kick-off usually an export of this client is already running. */
public class ThrottledException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public ThrottledException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
