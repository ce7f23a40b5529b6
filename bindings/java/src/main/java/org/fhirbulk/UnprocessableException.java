package org.fhirbulk;

import java.util.List;

/** HTTP 422 (code 306, {@code unprocessable}): unsupported parameter values. */
public class UnprocessableException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public UnprocessableException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
