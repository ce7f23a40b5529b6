package org.fhirbulk;

import java.time.Instant;
import java.util.Collections;
import java.util.Map;

/**
 * One event of an export ({@link Export#pollEvent}): what the engine did, when. The fields
 * depend on the type (README, "Events"): e.g. {@code file_completed} has {@code index},
 * {@code url}, {@code lines} and {@code bytes}. URLs are without their query; no token, secret
 * or record is ever in an event.
 *
 * @param seq    1 for the export's first event, then one more each (a gap: events dropped)
 * @param time   when it happened (millisecond precision)
 * @param type   {@code kickoff}, {@code status}, {@code manifest}, {@code file_started},
 *               {@code file_completed}, {@code retry}, {@code warning}, ..., and last
 *               {@code completed}, {@code failed} or {@code cancelled}
 * @param fields the type's fields as JSON values ({@code String}, {@code Long}, {@code Double},
 *               {@code Boolean}, {@code List}, {@code Map}, or {@code null})
 * @param json   the whole event as the library gave it, for a log
 */
public record ExportEvent(long seq, Instant time, String type, Map<String, Object> fields, String json) {

    /** A field as text, or {@code null} when it is absent or not a string. */
    public String text(String field) {
        return fields.get(field) instanceof String s ? s : null;
    }

    /** A field as a number, or {@code -1} when it is absent or not a whole number. */
    public long number(String field) {
        return fields.get(field) instanceof Long l ? l : -1;
    }

    static ExportEvent parse(String json) {
        Map<String, Object> m = new java.util.LinkedHashMap<>(Json.parseObject(json));
        long seq = m.remove("seq") instanceof Long l ? l : 0;
        Object t = m.remove("time");
        Instant time = t instanceof String s ? Instant.parse(s) : Instant.EPOCH;
        String type = m.remove("type") instanceof String s ? s : "";
        return new ExportEvent(seq, time, type, Collections.unmodifiableMap(m), json);
    }

    @Override
    public String toString() {
        return json;
    }
}
