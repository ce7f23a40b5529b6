package org.fhirbulk;

import java.util.List;

/** Connection refused or reset, DNS, TLS, a broken transfer (code 200, {@code network}); {@link NetworkTimeoutException} (201) is a subclass. */
public class NetworkException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public NetworkException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
