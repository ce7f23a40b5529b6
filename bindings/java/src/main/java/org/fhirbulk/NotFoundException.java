package org.fhirbulk;

import java.util.List;

/** HTTP 404 or 410 (code 303, {@code not_found}), e.g. an unknown Group. */
public class NotFoundException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public NotFoundException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
