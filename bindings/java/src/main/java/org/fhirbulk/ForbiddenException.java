package org.fhirbulk;

import java.util.List;

/** HTTP 403 (code 302, {@code forbidden}). */
public class ForbiddenException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public ForbiddenException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
