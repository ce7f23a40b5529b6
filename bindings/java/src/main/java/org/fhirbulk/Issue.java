package org.fhirbulk;

/**
 * One {@code OperationOutcome.issue} the server sent with an error (or one fhirbulk made up, e.g.
 * for an invalid NDJSON line).
 *
 * @param severity    {@code fatal}, {@code error}, {@code warning} or {@code information}
 * @param code        the FHIR issue type, e.g. {@code not-found}, {@code login}, {@code throttled}
 * @param diagnostics the server's explanation; may be {@code null}
 */
public record Issue(String severity, String code, String diagnostics) {}
