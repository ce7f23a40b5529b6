package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * Config errors in Java terms (JavaTerms): real exports against the sandbox, whose config the
 * library refuses in {@code start()}. The message names the {@link ExportBuilder} call that set
 * the wrong value, in Java types, without positions in the JSON the binding wrote; the exception
 * keeps its class, code, name and status, and its cause has the library's own words.
 */
@ExtendWith(SandboxExtension.class)
@Timeout(60)
class JavaTermsTest {

    static ConfigException refused(ExportBuilder b) {
        ConfigException e = assertThrows(ConfigException.class, () -> b.start().close());
        assertEquals(103, e.code());
        assertEquals("config", e.name());
        assertEquals(0, e.httpStatus());
        assertNull(e.url());
        assertTrue(e.issues().isEmpty());
        assertInstanceOf(ConfigException.class, e.getCause(), "the library's message is the cause");
        assertTrue(e.getCause().getMessage().startsWith("invalid config: "), e.getCause().getMessage());
        return e;
    }

    static ExportBuilder export(Sandbox sb) {
        return FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient");
    }

    @Test
    void aMisspeltKeyThroughOptionNamesTheKeyAsGivenAndTheNearestOne(Sandbox sb) {
        ConfigException e = refused(export(sb).option("concurency", 2));
        assertEquals("invalid config: ExportBuilder.option(\"concurency\", ...): no such config key; "
                + "did you mean \"concurrency\" (or ExportBuilder.concurrency(int))?", e.getMessage());
        // The library's wording, for comparison: a JSON position and every key it knows.
        String own = e.getCause().getMessage();
        assertTrue(own.startsWith("invalid config: concurency: unknown field `concurency`, expected one of `base_url`"), own);
        assertTrue(own.matches(".* at line 1 column \\d+$"), own);

        // A key spelt the Java way finds its config key.
        e = refused(export(sb).option("retryMaxAttempts", 2));
        assertEquals("invalid config: ExportBuilder.option(\"retryMaxAttempts\", ...): no such config key; "
                + "did you mean \"retry_max_attempts\"?", e.getMessage());
        // Nothing near: no guess.
        e = refused(export(sb).option("no_such_key", true));
        assertEquals("invalid config: ExportBuilder.option(\"no_such_key\", ...): no such config key "
                + "(README \"Config keys\" lists them)", e.getMessage());
        // A key inside a map given to option.
        e = refused(export(sb).option("auth", Map.of("type", "bearer", "tokn", "x")));
        assertEquals("invalid config: ExportBuilder.option(\"auth\", ...): auth has no key \"tokn\"; "
                + "did you mean \"token\"?", e.getMessage());
    }

    @Test
    void aWrongTypeIsSaidInJavaTypes(Sandbox sb) {
        ConfigException e = refused(export(sb).option("concurrency", "four"));
        assertEquals("invalid config: ExportBuilder.option(\"concurrency\", ...) must be an int, not the String \"four\"",
                e.getMessage());
        assertTrue(e.getCause().getMessage().startsWith(
                "invalid config: concurrency: invalid type: string \"four\", expected usize at line 1 column "),
                e.getCause().getMessage());

        assertEquals("invalid config: ExportBuilder.option(\"lenient\", ...) must be a boolean, not the String \"yes\"",
                refused(export(sb).option("lenient", "yes")).getMessage());
        assertEquals("invalid config: ExportBuilder.option(\"types\", ...) must be a List<String> or a String[], "
                + "not the String \"Patient,Observation\"",
                refused(export(sb).option("types", "Patient,Observation")).getMessage());
        assertEquals("invalid config: ExportBuilder.option(\"types\", ...): types[1] must be a String, not the int 5",
                refused(export(sb).option("types", List.of("Patient", 5))).getMessage());
        assertEquals("invalid config: ExportBuilder.option(\"retry_max_attempts\", ...) must be an int of 0 or more, "
                + "not the int -1", refused(export(sb).option("retry_max_attempts", -1)).getMessage());
        assertEquals("invalid config: ExportBuilder.option(\"on_invalid_line\", ...) must be \"fail\" or \"skip\", "
                + "not \"ignore\"", refused(export(sb).option("on_invalid_line", "ignore")).getMessage());
        assertEquals("invalid config: ExportBuilder.option(\"since\", \"yesterday\") is not a FHIR instant such as "
                + "2024-01-31T00:00:00Z", refused(export(sb).option("since", "yesterday")).getMessage());
    }

    @Test
    void anOutOfRangeValueNamesTheTypedMethodThatSetIt(Sandbox sb) throws Exception {
        ConfigException e = refused(export(sb).concurrency(0));
        assertEquals("invalid config: ExportBuilder.concurrency(int) must be between 1 and 64, got 0", e.getMessage());
        assertEquals("invalid config: concurrency must be between 1 and 64, got 0", e.getCause().getMessage());
        // The same key through option is named as such.
        assertEquals("invalid config: ExportBuilder.option(\"concurrency\", ...) must be between 1 and 64, got 65",
                refused(export(sb).option("concurrency", 65)).getMessage());
        // The typed method works.
        Map<String, Long> counts = new TreeMap<>();
        try (Export export = export(sb).concurrency(2).start()) {
            for (BulkRecord r : export) {
                counts.merge(r.resourceType(), 1L, Long::sum);
            }
        }
        assertEquals(sb.truth("group", "g1", "Patient"), counts);

        // A file index past the end of a real export's file list.
        String checkpoint;
        String files;
        try (Export driver = export(sb).manifestOnly().start()) {
            for (BulkRecord r : driver) {
                throw new AssertionError("a manifestOnly export delivered " + r);
            }
            checkpoint = driver.checkpoint();
            files = driver.files();
        }
        int n = ((List<?>) Json.parse(files)).size();
        e = refused(export(sb).resume(checkpoint).resumeFiles(files).onlyFiles(0, n + 5));
        assertEquals("invalid config: ExportBuilder.onlyFiles(int...) names file " + (n + 5) + ", but the checkpoint counts "
                + n + " files (" + (n == 1 ? "indexes 0 to 0" : "indexes 0 to " + (n - 1)) + ")", e.getMessage());
        // Keys the message names are the methods that set them (or would).
        assertEquals("invalid config: ExportBuilder.onlyFiles(int...) is given without ExportBuilder.resume(String) "
                + "(the checkpoint of the export whose files it names)",
                refused(export(sb).onlyFiles(0)).getMessage());
        assertEquals("invalid config: ExportBuilder.patients(String...) needs ExportBuilder.allPatients() or "
                + "ExportBuilder.group(String)",
                refused(FhirBulk.export(sb.url("polls=0")).patients("Patient/1")).getMessage());
        assertEquals("invalid config: ExportBuilder.param(String, String) names _type, which the engine sends from "
                + "ExportBuilder.types(String...)", refused(export(sb).param("_type", "Observation")).getMessage());
        assertEquals("invalid config: Auth.ClientCredentials.alg(\"HS256\") is not supported; SMART uses RS384 or ES384",
                refused(export(sb).auth(Auth.clientCredentials("c").clientSecret(Secret.of("s")).alg("HS256")))
                        .getMessage());
        assertEquals("invalid config: FhirBulk.export(String) must be http or https, got scheme \"ftp\"",
                refused(FhirBulk.export("ftp://example.org/fhir")).getMessage());
    }

    @Test
    void aPositionInTheCallersOwnJsonStays(Sandbox sb) {
        // The checkpoint is the caller's text: where it is broken matters.
        assertEquals("invalid config: ExportBuilder.resume(String) is not a checkpoint: key must be a string at line 1 column 2",
                refused(export(sb).resume("{nope")).getMessage());
    }

    @Test
    void aNonConfigErrorIsUntouched(Sandbox sb) {
        String url = sb.url("polls=0");
        try (Export export = FhirBulk.export(url).group("no-such-group").concurrency(2).start()) {
            NotFoundException e = assertInstanceOf(NotFoundException.class, ErrorTest.failure(export));
            assertEquals("export kick-off failed: HTTP 404 Not Found: unknown Group/no-such-group (" + url
                    + "/Group/no-such-group/$export)", e.getMessage());
            assertNull(e.getCause());
        }
        // And the translation leaves a message that is not a config error as it is, position and all.
        String other = "protocol error: bad JSON at line 1 column 2";
        assertEquals(other, JavaTerms.message(other, Map.of("concurrency", "ExportBuilder.concurrency(int)")));
    }
}
