package org.fhirbulk;

import java.net.URI;

/**
 * Entry point of the fhirbulk Java binding: FHIR Bulk Data ({@code $export}) exports run by
 * libfhirbulk in-process.
 *
 * <pre>{@code
 * try (Export export = FhirBulk.export("https://ehr.example.org/r4")
 *         .group("g1").types("Patient", "Observation").start()) {
 *     for (BulkRecord r : export) {
 *         process(r.resourceType(), r.json());
 *     }
 * }
 * }</pre>
 *
 * The native library is loaded when the binding is first used: the one bundled in the jar
 * ({@code linux-x86-64/libfhirbulk.so}), or the file (or directory) named by the system
 * property {@code fhirbulk.library.path}. Its ABI version must be 3, else loading fails with an
 * {@link UnsatisfiedLinkError} saying so.
 */
public final class FhirBulk {
    private FhirBulk() {}

    /** Describes an export from the FHIR server at {@code baseUrl} (its service root). */
    public static ExportBuilder export(String baseUrl) {
        return new ExportBuilder(baseUrl);
    }

    /** The native library's version, e.g. {@code "0.1.0"}. */
    public static String version() {
        return LibFhirBulk.version();
    }

    /** The native library's ABI version (3 for this binding). */
    public static int abiVersion() {
        return LibFhirBulk.fhirbulk_abi_version();
    }

    /**
     * Caps the files downloading at once over all exports of the process ({@code 0}: the
     * default, 32). The exports of a process share the engine's threads: at most 8 control
     * threads, one timer for the exports waiting between polls (a waiting export holds no
     * thread) and at most {@code n} download threads; each export still downloads at most its
     * {@code concurrency} files at once. Any thread, any time.
     */
    public static void setMaxDownloads(int n) {
        if (n < 0) {
            throw new IllegalArgumentException("setMaxDownloads: n must be at least 0, not " + n);
        }
        LibFhirBulk.fhirbulk_set_max_downloads(n);
    }

    /** The absolute path the native library was loaded from (an extracted temporary file when
     *  it came from the jar). */
    public static String libraryLocation() {
        return LibFhirBulk.LOCATION;
    }

    /** A URL without query, fragment or credentials, for logs. */
    static String redactUrl(String url) {
        try {
            URI u = new URI(url);
            if (u.getScheme() == null || u.getHost() == null) {
                return "<url>";
            }
            return new URI(u.getScheme(), null, u.getHost(), u.getPort(), u.getPath(), null, null).toString();
        } catch (Exception e) {
            return "<url>";
        }
    }
}
