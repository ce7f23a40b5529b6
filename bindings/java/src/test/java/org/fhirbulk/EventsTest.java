package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** The engine's events through the binding (README, "Events"), against the sandbox. */
@ExtendWith(SandboxExtension.class)
@Timeout(60)
class EventsTest {

    @Test
    void eventsTellWhatTheExportDidWhileAnotherThreadPullsTheRecords(Sandbox sb) throws Exception {
        Map<String, Long> truth = sb.truth("group", "g1", "Patient,Observation");
        try (Export export = FhirBulk.export(sb.url("polls=2")).group("g1").types("Patient", "Observation")
                .option("event_queue_size", 100000).start()) {
            CompletableFuture<List<ExportEvent>> reader = CompletableFuture.supplyAsync(() -> {
                List<ExportEvent> got = new ArrayList<>();
                for (Optional<ExportEvent> e; (e = export.pollEvent(Duration.ofSeconds(30))).isPresent(); ) {
                    got.add(e.get());
                }
                return got;
            });
            Map<String, Long> counts = new TreeMap<>();
            for (BulkRecord r : export) {
                counts.merge(r.resourceType(), 1L, Long::sum);
            }
            assertEquals(truth, counts);
            List<ExportEvent> events = reader.get(30, TimeUnit.SECONDS);
            assertTrue(export.eventsDone());
            assertEquals(0, export.eventsDropped());
            assertEquals("kickoff", events.get(0).type(), events.toString());
            assertTrue(events.get(0).text("status_url").startsWith("http"), events.get(0).json());
            assertEquals("completed", events.get(events.size() - 1).type());
            for (int i = 0; i < events.size(); i++) {
                assertEquals(i + 1, events.get(i).seq(), "no gap");
            }
            assertEquals(2, events.stream().filter(e -> e.type().equals("status")).count());
            int files = ((List<?>) Json.parse(export.files())).size();
            List<ExportEvent> done = events.stream().filter(e -> e.type().equals("file_completed")).toList();
            assertEquals(files, done.size());
            long lines = done.stream().mapToLong(e -> e.number("lines")).sum();
            assertEquals(truth.values().stream().mapToLong(Long::longValue).sum(), lines);
            assertFalse(events.get(0).time().isAfter(events.get(events.size() - 1).time()));
            // After the end: nothing more, at once.
            assertTrue(export.pollEvent(Duration.ofSeconds(10)).isEmpty());
            assertTrue(export.events().isEmpty());
        }
    }

    @Test
    void aFailedExportEndsWithAFailedEventAndTheErrorInParts(Sandbox sb) {
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("no-such-group").start()) {
            NotFoundException e = assertThrows(NotFoundException.class, () -> export.iterator().hasNext());
            assertEquals(404, e.httpStatus());
            assertTrue(e.url().endsWith("/Group/no-such-group/$export"), e.url());
            assertEquals("not-found", e.issues().get(0).code());
            assertEquals("error", e.issues().get(0).severity());
            assertTrue(e.issues().get(0).diagnostics().contains("no-such-group"));
            List<ExportEvent> events = export.events();
            ExportEvent last = events.get(events.size() - 1);
            assertEquals("failed", last.type(), events.toString());
            @SuppressWarnings("unchecked")
            Map<String, Object> error = (Map<String, Object>) last.fields().get("error");
            assertEquals("not_found", error.get("name"));
        }
    }

    @Test
    void pollEventAfterCloseThrows(Sandbox sb) {
        Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient").start();
        export.close();
        assertThrows(IllegalStateException.class, () -> export.pollEvent(Duration.ZERO));
        assertEquals(0, export.eventsDropped());
    }
}
