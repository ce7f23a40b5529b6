package org.fhirbulk;

/**
 * Slf4jRoutingTest's child JVM: prints which {@link System.LoggerFinder} the JVM found, then
 * runs an export of {@code args[0]} (group g1, Patient) to its end and counts the records.
 */
public final class Slf4jRoutingMain {
    private Slf4jRoutingMain() {}

    public static void main(String[] args) {
        System.out.println("finder: " + System.LoggerFinder.getLoggerFinder().getClass().getName());
        long n = 0;
        try (Export export = FhirBulk.export(args[0]).group("g1").types("Patient").start()) {
            for (BulkRecord r : export) {
                n += r.length() > 0 ? 1 : 0;
            }
        }
        System.out.println("records: " + n);
    }
}
