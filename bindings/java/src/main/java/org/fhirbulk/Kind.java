package org.fhirbulk;

/** Which manifest list a record's file came from. */
public enum Kind {
    /** A resource from an {@code output} file. */
    OUTPUT,
    /** An OperationOutcome from an {@code error} file (or one fhirbulk made for an invalid line). */
    ERROR,
    /** A Bundle of deletions from a {@code deleted} file. */
    DELETED;

    private static final Kind[] VALUES = values();

    static Kind of(int k) {
        return k >= 0 && k < VALUES.length ? VALUES[k] : OUTPUT;
    }
}
