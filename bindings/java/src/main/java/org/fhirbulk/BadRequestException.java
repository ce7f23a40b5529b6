package org.fhirbulk;

import java.util.List;

/** HTTP 400 (code 300, {@code bad_request}). */
public class BadRequestException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public BadRequestException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
