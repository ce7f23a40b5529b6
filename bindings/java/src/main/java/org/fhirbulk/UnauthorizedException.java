package org.fhirbulk;

import java.util.List;

/** HTTP 401 (code 301, {@code unauthorized}); the issues say {@code login} or {@code expired}. */
public class UnauthorizedException extends AuthException {
    private static final long serialVersionUID = 1L;

    public UnauthorizedException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
