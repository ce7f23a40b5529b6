package org.fhirbulk;

import java.util.List;

/** A request or a read timed out (code 201, {@code timeout_error}). */
public class NetworkTimeoutException extends NetworkException {
    private static final long serialVersionUID = 1L;

    public NetworkTimeoutException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
