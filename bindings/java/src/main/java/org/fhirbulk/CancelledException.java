package org.fhirbulk;

import java.util.List;

/**
 * The export was cancelled ({@link Export#cancel()}, status 4 {@code cancelled}), closed while a
 * consumer waited, or the waiting thread was interrupted (then the thread's interrupt flag is
 * set again and the export keeps running until it is closed).
 */
public class CancelledException extends FhirBulkException {
    private static final long serialVersionUID = 1L;

    public CancelledException(String message) {
        super(LibFhirBulk.CANCELLED, "cancelled", 0, null, message, List.of());
    }
}
