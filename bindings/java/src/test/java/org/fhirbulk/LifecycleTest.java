package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** cancel / close / interrupt from other threads, close twice, the Cleaner. */
@ExtendWith(SandboxExtension.class)
@Timeout(60)
class LifecycleTest {
    /** Slow files and a server that keeps the job "in progress" for a while: consumers block. */
    static final String SLOW = "slow=300;polls=3";

    /** A consumer on its own thread: counts records, keeps what ended it. */
    static final class Consumer extends Thread {
        final Export export;
        final AtomicLong records = new AtomicLong();
        final AtomicReference<Throwable> ended = new AtomicReference<>();
        final CountDownLatch started = new CountDownLatch(1);
        volatile long endedAtNanos;
        volatile boolean interruptFlagAfter;

        Consumer(Export export) {
            super("consumer");
            this.export = export;
        }

        @Override
        public void run() {
            try {
                started.countDown();
                for (BulkRecord r : export) {
                    r.json();
                    records.incrementAndGet();
                }
            } catch (Throwable t) {
                ended.set(t);
            } finally {
                interruptFlagAfter = Thread.currentThread().isInterrupted();
                endedAtNanos = System.nanoTime();
            }
        }
    }

    static boolean deleteSent(Sandbox sb, String scenario) throws Exception {
        for (int i = 0; i < 100; i++) {
            for (Map<String, Object> r : sb.requests()) {
                if ("DELETE".equals(r.get("method")) && String.valueOf(r.get("path")).contains(scenario)
                        && String.valueOf(r.get("path")).contains("/jobs/")) {
                    return true;
                }
            }
            Thread.sleep(50);
        }
        return false;
    }

    @Test
    void cancelFromAnotherThreadWakesABlockedConsumer(Sandbox sb) throws Exception {
        String scenario = SLOW + ";progress=cancel-test";
        try (Export export = FhirBulk.export(sb.url(scenario)).group("g1").start()) {
            Consumer c = new Consumer(export);
            c.start();
            c.started.await();
            Thread.sleep(500);
            assertTrue(c.isAlive(), "the consumer is blocked waiting");
            assertEquals(0, c.records.get());
            long t0 = System.nanoTime();
            export.cancel();
            c.join(5000);
            assertFalse(c.isAlive());
            long wokeMs = TimeUnit.NANOSECONDS.toMillis(c.endedAtNanos - t0);
            assertTrue(wokeMs < 1000, "woke after " + wokeMs + " ms");
            CancelledException e = assertInstanceOf(CancelledException.class, c.ended.get());
            assertEquals(4, e.code());
            assertTrue(e.getMessage().contains("cancelled"), e.getMessage());
            assertEquals(Progress.State.CANCELLED, export.progress().state());
            assertTrue(deleteSent(sb, "progress=cancel-test"), "the server job was deleted");
            export.cancel(); // again: no effect
        }
    }

    @Test
    void closeFromAnotherThreadWakesABlockedConsumer(Sandbox sb) throws Exception {
        Export export = FhirBulk.export(sb.url(SLOW)).group("g1").start();
        Consumer c = new Consumer(export);
        c.start();
        c.started.await();
        Thread.sleep(300);
        export.close();
        c.join(5000);
        assertFalse(c.isAlive());
        CancelledException e = assertInstanceOf(CancelledException.class, c.ended.get());
        assertTrue(e.getMessage().contains("closed"), e.getMessage());
        assertTrue(export.isClosed());
        assertThrows(IllegalStateException.class, export::progress);
        assertThrows(IllegalStateException.class, export::manifest);
        assertDoesNotThrow(export::cancel);
        assertDoesNotThrow(export::close);
    }

    @Test
    void interruptingABlockedConsumer(Sandbox sb) throws Exception {
        try (Export export = FhirBulk.export(sb.url(SLOW)).group("g1").start()) {
            Consumer c = new Consumer(export);
            c.start();
            c.started.await();
            Thread.sleep(300);
            long t0 = System.nanoTime();
            c.interrupt();
            c.join(5000);
            assertFalse(c.isAlive());
            assertTrue(TimeUnit.NANOSECONDS.toMillis(c.endedAtNanos - t0) < 1000);
            CancelledException e = assertInstanceOf(CancelledException.class, c.ended.get());
            assertTrue(e.getMessage().contains("interrupted"), e.getMessage());
            assertTrue(c.interruptFlagAfter, "the interrupt flag is set again");
            assertFalse(export.progress().state().isTerminal(), "interrupt alone does not stop the export");
        }
    }

    @Test
    void closeTwiceAndFromManyThreads(Sandbox sb) throws Exception {
        Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient").start();
        Iterator<BulkRecord> it = export.iterator();
        assertTrue(it.hasNext());
        it.next();
        export.close();
        export.close();
        assertTrue(export.isClosed());
        assertThrows(CancelledException.class, it::hasNext);

        // Many threads closing at once, one of them the consumer.
        for (int round = 0; round < 5; round++) {
            Export e = FhirBulk.export(sb.url("polls=0")).group("g1").start();
            ExecutorService pool = Executors.newFixedThreadPool(4);
            CountDownLatch go = new CountDownLatch(1);
            List<Future<?>> fs = new java.util.ArrayList<>();
            for (int i = 0; i < 4; i++) {
                fs.add(pool.submit(() -> {
                    go.await();
                    e.close();
                    return null;
                }));
            }
            go.countDown();
            for (Future<?> f : fs) {
                f.get(10, TimeUnit.SECONDS);
            }
            pool.shutdown();
            assertTrue(e.isClosed());
        }
    }

    @Test
    void closeFromAnotherThreadInTheMiddleOfABatchKeepsItsMemory(Sandbox sb) throws Exception {
        Export export = FhirBulk.export(sb.url("polls=0")).group("g1").types("Observation")
                .option("concurrency", 1).start();
        Iterator<BulkRecord> it = export.iterator();
        BulkRecord first = it.next();
        BulkRecord second = it.next(); // same batch (a file holds 100 lines)
        assertEquals(first.fileIndex(), second.fileIndex());
        Thread closer = new Thread(export::close);
        closer.start();
        closer.join(5000);
        assertTrue(export.isClosed());
        // The batch is still in the consumer's hands: its memory was kept.
        ByteBuffer b = second.buffer();
        assertEquals('{', b.get(0));
        assertTrue(second.json().startsWith("{"));
        // The consumer's next step frees it and says why.
        CancelledException e = assertThrows(CancelledException.class, it::hasNext);
        assertTrue(e.getMessage().contains("closed"));
        assertThrows(IllegalStateException.class, second::json);
        export.close();
    }

    @Test
    void theCleanerFreesAForgottenExport(Sandbox sb) throws Exception {
        int before = Export.FREED_BY_CLEANER.get();
        startAndForget(sb);
        for (int i = 0; i < 200 && Export.FREED_BY_CLEANER.get() == before; i++) {
            System.gc();
            Thread.sleep(50);
        }
        assertTrue(Export.FREED_BY_CLEANER.get() > before, "the Cleaner freed the export");
    }

    private static void startAndForget(Sandbox sb) {
        Export e = FhirBulk.export(sb.url("polls=0")).group("g2").types("Patient").start();
        assertTrue(e.iterator().hasNext());
    }

    @Test
    void exportEndsCleanlyAndEndIsStable(Sandbox sb) throws Exception {
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g2").types("Condition").start()) {
            Iterator<BulkRecord> it = export.iterator();
            long n = 0;
            while (it.hasNext()) {
                it.next();
                n++;
            }
            assertEquals(sb.truth("group", "g2", "Condition").get("Condition"), n);
            assertFalse(it.hasNext());
            assertThrows(java.util.NoSuchElementException.class, it::next);
        }
    }

    @Test
    void manifestIsNullBeforeTheServerAnswers(Sandbox sb) {
        try (Export export = FhirBulk.export(sb.url("polls=50")).group("g1").start()) {
            assertNull(export.manifest());
            assertTrue(export.transactionTime().isEmpty());
            assertEquals("[]", export.files());
        }
    }
}
