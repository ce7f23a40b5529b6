package org.fhirbulk;

import java.util.List;

/** The config is not valid (code 103, {@code config}); the message names the key. */
public class ConfigException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public ConfigException(int code, String name, int httpStatus, String url, String message, List<Issue> issues) {
        super(code, name, httpStatus, url, message, issues);
    }
}
