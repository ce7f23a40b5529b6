package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.time.Instant;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The binding's tiny JSON writer and reader. */
class JsonTest {
    @Test
    void writesEscapedStrings() {
        assertEquals("\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f/é☃😀\"",
                Json.write("a\"b\\c\n\r\t\b\f\u0001\u001f/é☃😀"));
        assertEquals("\"\\u0000\"", Json.write("\u0000"));
        assertEquals("\"\\ud800x\"", Json.write("\ud800x")); // lone surrogate
        assertEquals("\"\\u2028\\u2029\"", Json.write("\u2028\u2029"));
    }

    @Test
    void writesValues() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("s", "x");
        m.put("i", 4);
        m.put("l", 5_000_000_000L);
        m.put("d", 1.5);
        m.put("whole", 2.0);
        m.put("b", true);
        m.put("n", null);
        m.put("list", List.of("a", 1));
        m.put("arr", new String[] {"p", "q"});
        m.put("t", Instant.parse("2024-01-31T00:00:00Z"));
        m.put("secret", Secret.env("X"));
        m.put("auth", Auth.bearer("tok"));
        assertEquals("{\"s\":\"x\",\"i\":4,\"l\":5000000000,\"d\":1.5,\"whole\":2,\"b\":true,\"n\":null,"
                + "\"list\":[\"a\",1],\"arr\":[\"p\",\"q\"],\"t\":\"2024-01-31T00:00:00Z\","
                + "\"secret\":{\"env\":\"X\"},\"auth\":{\"type\":\"bearer\",\"token\":\"tok\"}}", Json.write(m));
        assertThrows(IllegalArgumentException.class, () -> Json.write(Double.NaN));
        assertThrows(IllegalArgumentException.class, () -> Json.write(new Object()));
    }

    @Test
    void roundTrips() {
        String tricky = "q\"b\\s/\n\u0000é☃😀\u2028";
        Map<String, Object> m = new LinkedHashMap<>();
        m.put(tricky, Arrays.asList(tricky, -12L, 3.25, false, null, Map.of()));
        assertEquals(m, Json.parse(Json.write(m)));
    }

    @Test
    void parses() {
        assertEquals(Map.of("a", List.of(1L, -2L, 0.5, 1e10, "\u00e9\ud83d\ude00/")),
                Json.parse(" {\"a\" : [1, -2, 0.5, 1e10, \"\\u00e9\\ud83d\\ude00\\/\"]} "));
        assertEquals(Long.MAX_VALUE, ((Number) Json.parse("9223372036854775807")).doubleValue(), 1e4);
        for (String bad : new String[] {"", "{", "[1,]x", "{\"a\"}", "\"\\x\"", "tru", "01x", "\"a", "[1 2]",
                "{\"a\":1,}", "-", "\"\u0001\""}) {
            assertThrows(IllegalArgumentException.class, () -> Json.parse(bad), bad);
        }
        assertEquals(Map.of(), Json.parseObject("not json"));
        assertEquals(Map.of(), Json.parseObject("[1]"));
        String deep = "[".repeat(10_000) + "]".repeat(10_000);
        assertThrows(IllegalArgumentException.class, () -> Json.parse(deep));
    }

    @Test
    void errorDetailBecomesTheRightException() {
        FhirBulkException e = FhirBulkException.fromDetail(303, "{\"code\":303,\"name\":\"not_found\",\"http_status\":404,"
                + "\"url\":\"http://h/fhir/Group/x/$export\",\"message\":\"kick-off failed: HTTP 404 Not Found: nope\","
                + "\"issues\":[{\"severity\":\"error\",\"code\":\"not-found\",\"diagnostics\":\"nope\"}]}");
        assertEquals(NotFoundException.class, e.getClass());
        assertEquals(404, e.httpStatus());
        assertEquals("http://h/fhir/Group/x/$export", e.url());
        assertEquals("kick-off failed: HTTP 404 Not Found: nope (http://h/fhir/Group/x/$export)", e.getMessage());
        assertEquals(List.of(new Issue("error", "not-found", "nope")), e.issues());
        // A detail for another code (or none): only the code is trusted.
        FhirBulkException busy = FhirBulkException.fromDetail(102, "{\"code\":303}");
        assertEquals(FhirBulkException.class, busy.getClass());
        assertEquals("busy", busy.name());
        assertEquals(NetworkTimeoutException.class, FhirBulkException.fromDetail(201, "").getClass());
        assertEquals(FhirBulkException.class, FhirBulkException.fromDetail(309, "").getClass());
    }
}
