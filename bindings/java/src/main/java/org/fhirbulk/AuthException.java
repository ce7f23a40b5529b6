package org.fhirbulk;

import java.util.List;

/** Authorization failed (code 203, {@code auth}): the token endpoint refused, a key could not be used, or the token would go to a foreign host. {@link UnauthorizedException} (HTTP 401) is a subclass. */
public class AuthException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public AuthException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
