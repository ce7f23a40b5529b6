package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** Every error class with its code, HTTP status, URL and OperationOutcome issues. */
@ExtendWith(SandboxExtension.class)
@Timeout(60)
class ErrorTest {

    /** Runs the export to its end and returns what it threw. */
    static FhirBulkException failure(Export export) {
        return assertThrows(FhirBulkException.class, () -> {
            for (BulkRecord r : export) {
                r.json();
            }
        });
    }

    @ParameterizedTest(name = "kickoff={0} -> {1}")
    @CsvSource({
        "400, BadRequestException,    300, bad_request,   sandbox forced 400",
        "403, ForbiddenException,     302, forbidden,     sandbox forced 403",
        "404, NotFoundException,      303, not_found,     sandbox forced 404",
        "422, UnprocessableException, 306, unprocessable, sandbox forced 422",
        "429, ThrottledException,     307, throttled,     an export is already running",
        "500, ServerException,        308, server,        sandbox forced 500",
    })
    void kickoffErrorsMapToTheirClass(int http, String className, int code, String name, String diagnostics,
            Sandbox sb) throws Exception {
        try (Export export = FhirBulk.export(sb.url("kickoff=" + http)).group("g1").types("Patient")
                // 429 and 5xx are retried; one attempt keeps the test fast.
                .option("retry_max_attempts", 1)
                .start()) {
            java.util.Iterator<BulkRecord> it = export.iterator();
            FhirBulkException e = assertThrows(FhirBulkException.class, it::hasNext);
            assertEquals("org.fhirbulk." + className, e.getClass().getName());
            assertEquals(code, e.code());
            assertEquals(name, e.name());
            assertEquals(http, e.httpStatus());
            assertTrue(e.url().endsWith("/fhir/Group/g1/$export"), e.url());
            assertFalse(e.url().contains("?"), "no query in the URL: " + e.url());
            assertTrue(e.getMessage().contains("HTTP " + http), e.getMessage());
            List<Issue> issues = e.issues();
            assertFalse(issues.isEmpty(), "OperationOutcome issues");
            assertEquals("error", issues.get(0).severity());
            assertTrue(issues.get(0).diagnostics().contains(diagnostics), issues.toString());

            Progress p = export.progress();
            assertEquals(Progress.State.FAILED, p.state());
            assertEquals(code, p.errorCode());
            assertEquals(http, p.httpStatus());
            // The error is sticky: pulling again gives the same class.
            assertEquals(e.getClass(), assertThrows(FhirBulkException.class, it::hasNext).getClass());
        }
    }

    @Test
    void unknownGroupIsNotFoundWithTheServersIssue(Sandbox sb) {
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("no-such-group").start()) {
            NotFoundException e = assertInstanceOf(NotFoundException.class, failure(export));
            assertEquals(404, e.httpStatus());
            assertEquals(List.of(new Issue("error", "not-found", "unknown Group/no-such-group")), e.issues());
            assertTrue(e.getMessage().contains("unknown Group/no-such-group"), e.getMessage());
        }
    }

    @Test
    void failedJobIsAServerError(Sandbox sb) {
        try (Export export = FhirBulk.export(sb.url("polls=1;retry_after=0;poll=500")).group("g1")
                .option("retry_max_attempts", 1).option("poll_min_ms", 10).start()) {
            ServerException e = assertInstanceOf(ServerException.class, failure(export));
            assertEquals(500, e.httpStatus());
            assertTrue(e.url().contains("/jobs/"), e.url());
        }
    }

    @Test
    void protocolErrors(Sandbox sb) {
        try (Export export = FhirBulk.export(sb.url("polls=0;bad_manifest")).group("g1").start()) {
            assertInstanceOf(ProtocolException.class, failure(export));
        }
    }

    @Test
    void connectionRefusedIsANetworkError() throws Exception {
        int port;
        try (java.net.ServerSocket s = new java.net.ServerSocket(0)) {
            port = s.getLocalPort();
        }
        try (Export export = FhirBulk.export("http://127.0.0.1:" + port + "/fhir")
                .option("retry_max_attempts", 1).start()) {
            NetworkException e = assertInstanceOf(NetworkException.class, failure(export));
            assertEquals(200, e.code());
            assertEquals(0, e.httpStatus());
        }
    }

    @Test
    void badConfigIsAConfigExceptionNamingTheKey() {
        ConfigException e = assertThrows(ConfigException.class,
                () -> FhirBulk.export("http://127.0.0.1:1/fhir").option("concurrency", 0).start());
        assertEquals(103, e.code());
        assertEquals("config", e.name());
        assertTrue(e.getMessage().contains("concurrency"), e.getMessage());

        e = assertThrows(ConfigException.class,
                () -> FhirBulk.export("http://127.0.0.1:1/fhir").option("no_such_key", true).start());
        assertTrue(e.getMessage().contains("no_such_key"), e.getMessage());

        e = assertThrows(ConfigException.class,
                () -> FhirBulk.export("http://127.0.0.1:1/fhir").option("since", "yesterday").start());
        assertTrue(e.getMessage().contains("since"), e.getMessage());

        // The base URL is FhirBulk.export's (JavaTermsTest has the exact messages).
        e = assertThrows(ConfigException.class, () -> FhirBulk.export("ftp://example.org/fhir").start());
        assertTrue(e.getMessage().contains("FhirBulk.export(String)"), e.getMessage());
        assertTrue(e.getCause().getMessage().contains("base_url"), "the library's own words: " + e.getCause());

        // Group level without an id: the method that sets one.
        e = assertThrows(ConfigException.class,
                () -> FhirBulk.export("http://127.0.0.1:1/fhir").option("level", "group").start());
        assertTrue(e.getMessage().contains("ExportBuilder.group(String)"), e.getMessage());

        // A lone surrogate cannot be UTF-8: escaped, it is the library's config error, not a '?'.
        assertThrows(ConfigException.class,
                () -> FhirBulk.export("http://127.0.0.1:1/fhir").group("g\ud800").start());
    }

    @Test
    void errorsFromTheStartingThreadDoNotLeakToOthers() throws Exception {
        assertThrows(ConfigException.class,
                () -> FhirBulk.export("http://127.0.0.1:1/fhir").option("concurrency", 0).start());
        // The thread-local last error belongs to the thread that failed; other threads start clean.
        Throwable[] other = new Throwable[1];
        Thread t = new Thread(() -> {
            try (Export e = FhirBulk.export("http://127.0.0.1:1/fhir").option("retry_max_attempts", 1).start()) {
                other[0] = failure(e);
            }
        });
        t.start();
        t.join();
        assertInstanceOf(NetworkException.class, other[0]);
    }
}
