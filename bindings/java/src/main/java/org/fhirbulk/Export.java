package org.fhirbulk;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import java.lang.ref.Cleaner;
import java.lang.ref.Reference;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.Optional;
import java.util.Spliterator;
import java.util.Spliterators;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.ReentrantLock;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

/**
 * A running export ({@link ExportBuilder#start()}): iterate it for the records, close it when
 * done.
 *
 * <pre>{@code
 * try (Export export = FhirBulk.export(url).group("g1").start()) {
 *     for (BulkRecord r : export) {          // or export.stream()
 *         store(r.resourceType(), r.json());
 *     }
 *     String manifest = export.manifest();
 * }
 * }</pre>
 *
 * <p><b>Consuming.</b> {@link #iterator()} (and {@link #stream()}, which uses it) can be taken
 * once: an export is a one-pass stream, like {@link java.nio.file.DirectoryStream}. One thread at
 * a time consumes it. Records arrive in batches of up to 4096 lines of one file (one native call
 * per batch); a record stays valid until the iteration moves on (see {@link BulkRecord}). The
 * iteration ends normally when every record was delivered; it throws a {@link FhirBulkException}
 * subclass when the export failed, {@link CancelledException} when it was cancelled or closed,
 * or when the waiting thread was interrupted (the interrupt flag is set again). While nothing
 * arrives, it waits in 200 ms slices, so interrupts and cancellation are seen promptly.
 *
 * <p><b>Any thread</b> may call {@link #progress()}, {@link #manifest()}, {@link #checkpoint()},
 * {@link #files()}, {@link #cancel()} and {@link #close()} at any time.
 *
 * <p><b>Closing.</b> {@link #close()} is idempotent and thread-safe: it cancels an unfinished
 * export (the server job is deleted), wakes a consumer blocked waiting for records (it throws
 * {@link CancelledException}), and frees the native state. When another thread is still in the
 * middle of a batch's records, the native memory is kept until that consumer's next step (which
 * then frees it and throws {@link CancelledException}), so its {@link BulkRecord#buffer()} views stay
 * readable; if that thread never steps on, the memory goes when the export becomes unreachable.
 * An export that is never closed is freed by a {@link Cleaner} once unreachable (and a warning is
 * logged) — close it.
 *
 * <p>Logging goes to {@link System.Logger} {@code "org.fhirbulk"} (DEBUG: start, end, failure;
 * WARNING: an export left to the Cleaner). Logs name the base URL without its query, the level
 * and the types — never secrets or record content.
 */
public final class Export implements AutoCloseable, Iterable<BulkRecord> {
    static final System.Logger LOG = System.getLogger("org.fhirbulk");

    /** Records asked for per native call. */
    static final int BATCH_MAX = 4096;
    /** Longest single native wait; between slices interrupts and close are checked. */
    static final int WAIT_SLICE_MS = 200;

    private static final AtomicInteger CLEANER_THREADS = new AtomicInteger();
    private static final Cleaner CLEANER = Cleaner.create(r -> {
        Thread t = new Thread(r, "fhirbulk-cleaner-" + CLEANER_THREADS.incrementAndGet());
        t.setDaemon(true);
        return t;
    });

    /** Exports freed by the Cleaner because nobody closed them (for tests and diagnostics). */
    static final AtomicInteger FREED_BY_CLEANER = new AtomicInteger();

    private final State st;
    private final Cleaner.Cleanable cleanable;
    private final AtomicBoolean iteratorTaken = new AtomicBoolean();
    /** Whether Arrow batches or a stream were taken (FhirBulkArrow). */
    private volatile boolean arrowPulled;

    Export(long handle, String description) {
        this.st = new State(handle, description);
        this.cleanable = CLEANER.register(this, st);
        LOG.log(System.Logger.Level.DEBUG, "fhirbulk: export started: {0}", description);
    }

    // ---- native state (shared with the Cleaner; must not reference the Export) -------------

    /** The handle and everything native; the Cleaner's action. */
    static final class State implements Runnable {
        final long handle;
        final String description;
        /** Guards the native consuming calls, the current batch's memory and the free. */
        final ReentrantLock lock = new ReentrantLock();
        /** struct FhirbulkBatch, written by export_next_batch. */
        final Memory batchOut = new Memory(LibFhirBulk.BATCH_SIZE);
        final long batchOutAddr = Pointer.nativeValue(batchOut);
        final ByteBuffer batchView = batchOut.getByteBuffer(0, LibFhirBulk.BATCH_SIZE)
                .order(ByteOrder.nativeOrder());
        final AtomicBoolean closeRequested = new AtomicBoolean();
        volatile boolean closed;
        volatile boolean freed;
        /** Under lock. */
        Batch current;
        /** Under lock: the thread of the last pull. */
        Thread consumer;
        /** Under lock: reusable heap copy of a batch's data. */
        byte[] heap = new byte[0];
        /** Under lock: the last resource type seen in this batch (its native pointer and string). */
        long lastTypeAddr;
        String lastType = "";

        State(long handle, String description) {
            this.handle = handle;
            this.description = description;
        }

        /** The Cleaner (an Export nobody closed), or close() through Cleanable.clean(). */
        @Override
        public void run() {
            lock.lock();
            try {
                if (!freed) {
                    if (closed) {
                        // close() was deferred to a consumer that never stepped on.
                        LOG.log(System.Logger.Level.DEBUG, "fhirbulk: freeing a closed export ({0})", description);
                    } else {
                        FREED_BY_CLEANER.incrementAndGet();
                        LOG.log(System.Logger.Level.WARNING,
                                "fhirbulk: an Export was not closed; the Cleaner frees it ({0})", description);
                    }
                    freeLocked();
                }
            } finally {
                lock.unlock();
            }
        }

        void freeLocked() {
            if (freed) {
                return;
            }
            closed = true;
            freed = true;
            invalidateLocked();
            int rc = LibFhirBulk.export_free(handle);
            if (rc != LibFhirBulk.OK) {
                LOG.log(System.Logger.Level.DEBUG, "fhirbulk: export_free gave {0}", rc);
            }
        }

        void invalidateLocked() {
            Batch b = current;
            if (b != null) {
                b.valid = false;
                current = null;
            }
        }

        /** Resource type names are short and few: read once per batch (per distinct pointer). */
        String typeAt(long addr, long len) {
            if (addr == lastTypeAddr && addr != 0) {
                return lastType;
            }
            String t = addr == 0 || len <= 0 ? "" : new String(new Pointer(addr).getByteArray(0, (int) len),
                    StandardCharsets.UTF_8);
            if (t.equals(lastType)) {
                t = lastType;
            }
            lastTypeAddr = addr;
            lastType = t;
            return t;
        }
    }

    /** One batch from export_next_batch: its records and its data buffer. */
    static final class Batch {
        final State st;
        final ByteBuffer data; // direct, native memory of the batch
        BulkRecord[] records;
        volatile boolean valid = true;
        byte[] heap; // heap copy of data, made on the first json()/bytes()

        Batch(State st, ByteBuffer data) {
            this.st = st;
            this.data = data;
        }

        /** The batch's data on the heap (copied once per batch, under the lock). */
        byte[] heap() {
            byte[] h = heap;
            if (h != null && valid) {
                return h;
            }
            st.lock.lock();
            try {
                if (!valid) {
                    throw stale();
                }
                if (heap == null) {
                    int n = data.capacity();
                    if (st.heap.length < n) {
                        st.heap = new byte[Math.max(n, Math.min(st.heap.length * 2, 64 << 20))];
                    }
                    data.get(0, st.heap, 0, n);
                    heap = st.heap;
                }
                return heap;
            } finally {
                st.lock.unlock();
            }
        }

        ByteBuffer slice(int offset, int length) {
            if (!valid) {
                throw stale();
            }
            return data.slice(offset, length).asReadOnlyBuffer();
        }

        /** A copy of an attachment record's document (under the lock: the memory lives). */
        byte[] content(long addr, long len) {
            checkContentLength(len);
            st.lock.lock();
            try {
                if (!valid) {
                    throw stale();
                }
                return addr == 0 || len == 0 ? new byte[0] : new Pointer(addr).getByteArray(0, (int) len);
            } finally {
                st.lock.unlock();
            }
        }

        /** A read-only view of an attachment record's document. */
        ByteBuffer contentView(long addr, long len) {
            checkContentLength(len);
            if (!valid) {
                throw stale();
            }
            ByteBuffer b = addr == 0 || len == 0 ? ByteBuffer.allocateDirect(0) : new Pointer(addr).getByteBuffer(0, len);
            return b.asReadOnlyBuffer();
        }

        private static void checkContentLength(long len) {
            if (len > Integer.MAX_VALUE - 8) {
                throw new IllegalStateException("fhirbulk: a document of " + len
                        + " bytes does not fit a Java array (attachment_max_bytes is at most 2 GiB)");
            }
        }

        static IllegalStateException stale() {
            return new IllegalStateException("fhirbulk: this BulkRecord is no longer valid: the iteration moved on "
                    + "(or the export was closed); copy what you keep with json() or bytes() while it is current");
        }
    }

    // ---- consuming --------------------------------------------------------------------------

    /**
     * The records. Can be called once (the export is a one-pass stream).
     *
     * @throws IllegalStateException on a second call
     */
    @Override
    public Iterator<BulkRecord> iterator() {
        if (!iteratorTaken.compareAndSet(false, true)) {
            throw new IllegalStateException("fhirbulk: an Export can be iterated once");
        }
        Iter it = new Iter();
        iter = it;
        return it;
    }

    /** The iterator handed out (for checkpoints part-way through a batch). */
    private volatile Iter iter;

    /** The records as a sequential stream; closing the stream closes the export. Once, like
     *  {@link #iterator()}. */
    public Stream<BulkRecord> stream() {
        Spliterator<BulkRecord> sp = Spliterators.spliteratorUnknownSize(iterator(),
                Spliterator.ORDERED | Spliterator.NONNULL);
        return StreamSupport.stream(sp, false).onClose(this::close);
    }

    private final class Iter implements Iterator<BulkRecord> {
        private BulkRecord[] records = new BulkRecord[0];
        private int next;
        private boolean end;

        @Override
        public boolean hasNext() {
            if (next < records.length) {
                if (st.closed) {
                    pull(); // frees and throws CancelledException
                }
                return true;
            }
            if (end) {
                return false;
            }
            records = new BulkRecord[0];
            next = 0;
            Batch b = pull();
            if (b == null) {
                end = true;
                return false;
            }
            records = b.records;
            return true;
        }

        @Override
        public BulkRecord next() {
            if (!hasNext()) {
                throw new NoSuchElementException();
            }
            return records[next++];
        }

        /** Records of the current batch not yet returned. */
        int unread() {
            return records.length - next;
        }
    }

    /** Pulls the next batch: null at the end; throws on failure, cancel, close, interrupt. */
    private Batch pull() {
        State s = st;
        Batch[] got = new Batch[1];
        int status = inSlices(() -> {
            int r = LibFhirBulk.export_next_batch(s.handle, BATCH_MAX, WAIT_SLICE_MS, s.batchOutAddr);
            if (r == LibFhirBulk.RECORD) {
                got[0] = readBatch(s);
                s.current = got[0];
            }
            return r;
        });
        if (status == LibFhirBulk.END) {
            if (LOG.isLoggable(System.Logger.Level.DEBUG)) {
                Progress p = progressOrNull();
                LOG.log(System.Logger.Level.DEBUG, "fhirbulk: export complete ({0}): {1} records, {2} files",
                        s.description, p == null ? "?" : p.records(), p == null ? "?" : p.filesTotal());
            }
            return null;
        }
        return got[0];
    }

    /**
     * The pull loop of the record and Arrow iterations: calls {@code call} (a pull of one
     * {@link #WAIT_SLICE_MS} slice, run under the state's lock with the handle alive) until it
     * returns {@link LibFhirBulk#RECORD} or {@link LibFhirBulk#END}, which are returned; throws
     * on a failure (with the library's detail), cancel, close and interrupt.
     */
    private int inSlices(java.util.function.IntSupplier call) {
        State s = st;
        try {
            while (true) {
                if (Thread.interrupted()) {
                    Thread.currentThread().interrupt();
                    throw new CancelledException("fhirbulk: interrupted while waiting for records "
                            + "(the export goes on until it is closed)");
                }
                int status;
                s.lock.lock();
                try {
                    s.invalidateLocked();
                    if (s.closed) {
                        s.freeLocked();
                        throw new CancelledException("fhirbulk: export closed");
                    }
                    s.consumer = Thread.currentThread();
                    status = call.getAsInt();
                    if (status == LibFhirBulk.RECORD) {
                        return status;
                    }
                    if (status != LibFhirBulk.TIMEOUT && status != LibFhirBulk.END
                            && status != LibFhirBulk.CANCELLED) {
                        // Read the detail on this thread, under the lock (the handle lives).
                        FhirBulkException e = FhirBulkException.fromLastError(status, s.handle);
                        LOG.log(System.Logger.Level.DEBUG, "fhirbulk: export failed ({0}): {1}",
                                s.description, e.getMessage());
                        throw e;
                    }
                } finally {
                    s.lock.unlock();
                }
                if (status == LibFhirBulk.END) {
                    return status;
                }
                if (status == LibFhirBulk.CANCELLED) {
                    throw new CancelledException(s.closed ? "fhirbulk: export closed" : "fhirbulk: export cancelled");
                }
                // TIMEOUT: next slice.
            }
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    // ---- Arrow (FhirBulkArrow): the same pull loop, with the Arrow functions ---------------

    /**
     * One {@code export_next_arrow_batch} pull, waiting in slices like {@link #pull()}: returns
     * {@link LibFhirBulk#RECORD} (the structs at {@code outArray} / {@code outSchema} and
     * {@code typeBuf} are filled) or {@link LibFhirBulk#END}; throws on failure, cancel,
     * close and interrupt exactly as the record iteration does. The addresses are Arrow Java
     * structs; this class does not know it.
     */
    int pullArrow(long maxRows, long outArray, long outSchema, byte[] typeBuf) {
        arrowPulled = true;
        State s = st;
        return inSlices(() -> LibFhirBulk.export_next_arrow_batch(s.handle, maxRows, WAIT_SLICE_MS,
                outArray, outSchema, typeBuf, typeBuf.length));
    }

    // ---- Parquet (FhirBulkParquet): the library's writer, in turns ---------------------------

    /**
     * Fails unless the export can be written as Parquet: open, and not read with the record
     * iterator or as Arrow (those records would be missing; the library does not refuse every
     * such case itself).
     */
    void checkWritable() {
        if (st.closed) {
            throw new IllegalStateException("fhirbulk: export closed: start a new export to write it as Parquet");
        }
        if (iteratorTaken.get() || arrowPulled) {
            throw new IllegalStateException("fhirbulk: this export's records were read already ("
                    + (arrowPulled ? "as Arrow" : "with its iterator")
                    + "): they would be missing from the Parquet dataset; write a new export");
        }
    }

    /**
     * {@code export_write_parquet} in {@link #WAIT_SLICE_MS} turns until the dataset is written;
     * returns the library's JSON summary. Throws on failure, cancel and close as {@link #pull()}
     * does; an interrupt closes the export (freeing it stops the library's writer and removes
     * its parts in progress) and throws {@link CancelledException} with the flag set again.
     * {@code accepted[0]} becomes true once the library took the directory (a call returned
     * anything but an invalid-argument refusal).
     */
    String writeParquet(byte[] dir, byte[] optionsJson, boolean[] accepted) {
        State s = st;
        try {
            while (true) {
                if (Thread.interrupted()) {
                    close();
                    accepted[0] = true;
                    Thread.currentThread().interrupt();
                    throw new CancelledException("fhirbulk: interrupted while writing Parquet (the export was closed)");
                }
                int status;
                s.lock.lock();
                try {
                    s.invalidateLocked();
                    if (s.closed) {
                        s.freeLocked();
                        throw new CancelledException("fhirbulk: export closed");
                    }
                    s.consumer = Thread.currentThread();
                    status = LibFhirBulk.export_write_parquet(s.handle, dir, optionsJson, WAIT_SLICE_MS, null, 0);
                    if (status != LibFhirBulk.ERR_INVALID_ARGUMENT && status != LibFhirBulk.ERR_BUSY
                            && status != LibFhirBulk.CANCELLED) {
                        accepted[0] = true;
                    }
                    if (status == LibFhirBulk.END) {
                        // Another call after the end gives the summary again: grow the buffer
                        // until it fits (the call returns a status, not the summary's length).
                        for (int size = 16384;; size *= 4) {
                            byte[] buf = new byte[size];
                            status = LibFhirBulk.export_write_parquet(s.handle, dir, optionsJson, 0, buf, size);
                            int n = 0;
                            while (n < size && buf[n] != 0) {
                                n++;
                            }
                            if (status != LibFhirBulk.END || n < size - 1) {
                                if (status == LibFhirBulk.END) {
                                    return new String(buf, 0, n, StandardCharsets.UTF_8);
                                }
                                break;
                            }
                        }
                    }
                    if (status != LibFhirBulk.TIMEOUT && status != LibFhirBulk.CANCELLED) {
                        FhirBulkException e = FhirBulkException.fromLastError(status, s.handle);
                        LOG.log(System.Logger.Level.DEBUG, "fhirbulk: Parquet write failed ({0}): {1}",
                                s.description, e.getMessage());
                        throw e;
                    }
                } finally {
                    s.lock.unlock();
                }
                if (status == LibFhirBulk.CANCELLED) {
                    throw new CancelledException(s.closed ? "fhirbulk: export closed" : "fhirbulk: export cancelled");
                }
                // TIMEOUT: next turn.
            }
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * {@code export_arrow_stream} into the struct at {@code outStream}.
     *
     * @throws IllegalStateException after {@link #close()}
     */
    void openArrowStream(byte[] resourceType, long maxRows, long outStream) {
        arrowPulled = true;
        State s = st;
        try {
            s.lock.lock();
            try {
                if (s.closed) {
                    throw closedException();
                }
                int status = LibFhirBulk.export_arrow_stream(s.handle, resourceType, maxRows, outStream);
                if (status != LibFhirBulk.OK) {
                    throw FhirBulkException.fromLastError(status, s.handle);
                }
            } finally {
                s.lock.unlock();
            }
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * What a failed {@code get_next} of an Arrow stream of this export means (the C stream
     * carries only text): {@link CancelledException} when the export was closed or cancelled,
     * the export's own failure when it failed, a {@link ProtocolException} for the decoder's
     * "file N line M: ..." (the one error a stream reports that the export does not), else a
     * {@link FhirBulkException} named {@code arrow_stream} with the stream's message.
     */
    FhirBulkException arrowStreamFailure(String message) {
        try {
            if (st.closed) {
                return new CancelledException("fhirbulk: export closed");
            }
            Progress p = progressOrNull();
            if (p == null) {
                return new CancelledException("fhirbulk: export closed");
            }
            if (p.state() == Progress.State.CANCELLED) {
                return new CancelledException("fhirbulk: export cancelled");
            }
            if (p.state() == Progress.State.FAILED && p.errorCode() != 0) {
                if (st.freed) {
                    throw closedException();
                }
                return FhirBulkException.fromLastError(p.errorCode(), st.handle);
            }
        } catch (IllegalStateException closed) {
            return new CancelledException("fhirbulk: export closed");
        } finally {
            Reference.reachabilityFence(this);
        }
        String text = message == null ? "" : message;
        java.util.regex.Matcher m = DECODE_ERROR.matcher(text);
        if (m.find()) {
            return FhirBulkException.create(LibFhirBulk.ERR_PROTOCOL, LibFhirBulk.statusName(LibFhirBulk.ERR_PROTOCOL),
                    0, null, text.substring(m.start()), java.util.List.of());
        }
        return new FhirBulkException(0, "arrow_stream", 0, null, "fhirbulk: the Arrow stream failed: " + text,
                java.util.List.of());
    }

    private static final java.util.regex.Pattern DECODE_ERROR =
            java.util.regex.Pattern.compile("file \\d+ line \\d+: ");

    /** Reads the FhirbulkBatch just written: one BulkRecord per line (no native access later). */
    private static Batch readBatch(State s) {
        ByteBuffer v = s.batchView;
        long recordsAddr = v.getLong(LibFhirBulk.BATCH_RECORDS);
        int count = (int) v.getLong(LibFhirBulk.BATCH_COUNT);
        long dataAddr = v.getLong(LibFhirBulk.BATCH_DATA);
        long dataLen = v.getLong(LibFhirBulk.BATCH_DATA_LEN);
        if (dataLen > Integer.MAX_VALUE) {
            throw new IllegalStateException("fhirbulk: batch larger than 2 GiB");
        }
        ByteBuffer data = dataLen == 0 ? ByteBuffer.allocateDirect(0)
                : new Pointer(dataAddr).getByteBuffer(0, dataLen);
        ByteBuffer recs = new Pointer(recordsAddr).getByteBuffer(0, (long) count * LibFhirBulk.RECORD_SIZE)
                .order(ByteOrder.nativeOrder());
        Batch b = new Batch(s, data);
        // Type name pointers are stable within a batch only (chunks are reused).
        s.lastTypeAddr = 0;
        BulkRecord[] out = new BulkRecord[count];
        for (int i = 0, at = 0; i < count; i++, at += LibFhirBulk.RECORD_SIZE) {
            long addr = recs.getLong(at + LibFhirBulk.RECORD_DATA);
            int len = (int) recs.getLong(at + LibFhirBulk.RECORD_LEN);
            String type = s.typeAt(recs.getLong(at + LibFhirBulk.RECORD_TYPE),
                    recs.getLong(at + LibFhirBulk.RECORD_TYPE_LEN));
            out[i] = new BulkRecord(b, (int) (addr - dataAddr), len, type,
                    Kind.of(recs.getInt(at + LibFhirBulk.RECORD_KIND)),
                    recs.getInt(at + LibFhirBulk.RECORD_FILE_INDEX),
                    recs.getLong(at + LibFhirBulk.RECORD_LINE),
                    recs.getLong(at + LibFhirBulk.RECORD_CONTENT),
                    recs.getLong(at + LibFhirBulk.RECORD_CONTENT_LEN));
        }
        b.records = out;
        return b;
    }

    // ---- any thread -------------------------------------------------------------------------

    /**
     * A progress snapshot; never blocks.
     *
     * @throws IllegalStateException after {@link #close()}
     */
    public Progress progress() {
        Progress p = progressOrNull();
        if (p == null) {
            throw closedException();
        }
        return p;
    }

    private Progress progressOrNull() {
        try {
            if (st.freed) {
                return null;
            }
            byte[] out = new byte[LibFhirBulk.PROGRESS_SIZE];
            int rc = LibFhirBulk.export_poll(st.handle, out);
            if (rc == LibFhirBulk.ERR_INVALID_HANDLE) {
                return null; // freed meanwhile
            }
            if (rc != LibFhirBulk.OK) {
                throw FhirBulkException.fromLastError(rc, 0L);
            }
            ByteBuffer b = ByteBuffer.wrap(out).order(ByteOrder.nativeOrder());
            return new Progress(
                    Progress.State.of(b.getInt(LibFhirBulk.PROGRESS_STATE)),
                    cString(out, LibFhirBulk.PROGRESS_SERVER_PROGRESS, LibFhirBulk.PROGRESS_SERVER_PROGRESS_LEN),
                    b.getInt(LibFhirBulk.PROGRESS_FILES_TOTAL),
                    b.getInt(LibFhirBulk.PROGRESS_FILES_DONE),
                    b.getLong(LibFhirBulk.PROGRESS_BYTES),
                    b.getLong(LibFhirBulk.PROGRESS_RECORDS),
                    b.getInt(LibFhirBulk.PROGRESS_POLLS),
                    b.getInt(LibFhirBulk.PROGRESS_RETRIES),
                    b.getLong(LibFhirBulk.PROGRESS_INVALID_LINES),
                    b.getInt(LibFhirBulk.PROGRESS_ERROR),
                    b.getInt(LibFhirBulk.PROGRESS_HTTP_STATUS),
                    b.getInt(LibFhirBulk.PROGRESS_WARNINGS),
                    b.getLong(LibFhirBulk.PROGRESS_WAIT_UNTIL_MS),
                    cString(out, LibFhirBulk.PROGRESS_WAIT_REASON, LibFhirBulk.PROGRESS_WAIT_REASON_LEN),
                    b.getLong(LibFhirBulk.PROGRESS_ATTACHMENTS_FETCHED),
                    b.getLong(LibFhirBulk.PROGRESS_ATTACHMENT_ERRORS));
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /** The NUL-terminated UTF-8 text in {@code out[at .. at + max)}. */
    private static String cString(byte[] out, int at, int max) {
        int n = 0;
        while (n < max && out[at + n] != 0) {
            n++;
        }
        return new String(out, at, n, StandardCharsets.UTF_8);
    }

    /**
     * The manifest as JSON (pages and partial manifests merged), or {@code null} before the
     * server has answered with one. Its {@code transactionTime} is the next incremental export's
     * {@code since} ({@link #transactionTime()}).
     *
     * @throws IllegalStateException after {@link #close()}
     */
    public String manifest() {
        return textOrNull(LibFhirBulk::export_manifest);
    }

    /** The manifest's {@code transactionTime}, once there is a manifest. */
    public Optional<Instant> transactionTime() {
        String m = manifest();
        if (m == null) {
            return Optional.empty();
        }
        Object t = Json.parseObject(m).get("transactionTime");
        if (!(t instanceof String s)) {
            return Optional.empty();
        }
        try {
            return Optional.of(OffsetDateTime.parse(s).toInstant());
        } catch (RuntimeException e) {
            try {
                return Optional.of(Instant.parse(s));
            } catch (RuntimeException e2) {
                return Optional.empty();
            }
        }
    }

    /**
     * A checkpoint (JSON) of what this consumer has received, or {@code null} before the kick-off
     * answered. Store it with the records you processed; {@link ExportBuilder#resume(String)}
     * continues from it later without a repeated record. Take it on the consuming thread between
     * records to be exact.
     *
     * @throws IllegalStateException after {@link #close()}
     */
    public String checkpoint() {
        // Records of the current batch not yet returned by the iterator are not "received":
        // the checkpoint must not count them, or a resume would skip them.
        Iter it = iter;
        long unread = it == null ? 0 : it.unread();
        return textOrNull((h, buf, len) -> LibFhirBulk.export_checkpoint_unread(h, unread, buf, len));
    }

    /**
     * The files known so far as a JSON array in {@link BulkRecord#fileIndex()} order:
     * {@code [{"index":0,"kind":"output","type":"Patient","url":"...","count":12}, ...]}.
     *
     * @throws IllegalStateException after {@link #close()}
     */
    public String files() {
        String s = textOrNull(LibFhirBulk::export_files_json);
        return s == null ? "[]" : s;
    }

    /**
     * What the engine noticed and worked around, oldest first (at most 100): a manifest listing a
     * file twice, a {@code count} that is not a number, a {@code Retry-After} clamped, a
     * {@code transactionTime} that is not an instant, ...
     *
     * @throws IllegalStateException after {@link #close()}
     */
    public java.util.List<String> warnings() {
        String s = textOrNull(LibFhirBulk::export_warnings_json);
        java.util.List<String> out = new java.util.ArrayList<>();
        if (s != null && Json.parse(s) instanceof java.util.List<?> list) {
            for (Object o : list) {
                out.add(String.valueOf(o));
            }
        }
        return out;
    }

    private String textOrNull(LibFhirBulk.TextFn fn) {
        try {
            if (st.freed) {
                throw closedException();
            }
            String s = LibFhirBulk.text(fn, st.handle);
            return s.isEmpty() ? null : s;
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /**
     * The export's next event (README, "Events": kick-off, status polls, the manifest, each file
     * started and completed, retries, tokens, warnings, and how it ended), waiting up to
     * {@code timeout} ({@link Duration#ZERO}: only looks). Empty when none came in time, or
     * after the last event ({@code completed}, {@code failed} or {@code cancelled}; then
     * {@link #eventsDone()} is true). Any thread; each event goes to one caller. The engine
     * keeps the latest {@code eventQueueSize} (default 1000) and drops the oldest when nobody
     * reads them ({@link #eventsDropped()}); the export never waits for its events.
     *
     * @throws IllegalStateException after {@link #close()}
     */
    public Optional<ExportEvent> pollEvent(Duration timeout) {
        int ms = (int) Math.max(0, Math.min(Integer.MAX_VALUE, timeout.toMillis()));
        byte[] buf = new byte[4096];
        long[] len = new long[1];
        try {
            for (;;) {
                if (st.freed) {
                    throw closedException();
                }
                int rc = LibFhirBulk.export_next_event(st.handle, ms, buf, buf.length, len);
                if (rc == LibFhirBulk.RECORD) {
                    return Optional.of(ExportEvent.parse(new String(buf, 0, (int) len[0], StandardCharsets.UTF_8)));
                }
                if (rc == LibFhirBulk.ERR_INVALID_ARGUMENT && len[0] >= buf.length && len[0] < (1 << 30)) {
                    buf = new byte[(int) len[0] + 1]; // the event stays queued: again with room
                    continue;
                }
                if (rc == LibFhirBulk.END) {
                    eventsDone = true;
                    return Optional.empty();
                }
                if (rc == LibFhirBulk.TIMEOUT) {
                    return Optional.empty();
                }
                throw FhirBulkException.fromLastError(rc, 0L);
            }
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /** The events there are now, oldest first, without waiting (none after the last one). */
    public List<ExportEvent> events() {
        List<ExportEvent> out = new ArrayList<>();
        for (Optional<ExportEvent> e; (e = pollEvent(Duration.ZERO)).isPresent(); ) {
            out.add(e.get());
        }
        return out;
    }

    /** Whether the export's last event was taken ({@link #pollEvent} gives no more). */
    public boolean eventsDone() {
        return eventsDone;
    }

    /** Events the engine dropped because nobody read them in time. */
    public long eventsDropped() {
        try {
            return st.freed ? 0 : LibFhirBulk.export_events_dropped(st.handle);
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    private volatile boolean eventsDone;

    /**
     * Cancels the export from any thread: stops the downloads, deletes the server's job, and
     * wakes a consumer waiting for records (it throws {@link CancelledException}). No effect on
     * an export that ended or was closed. Still {@link #close()} it.
     */
    public void cancel() {
        try {
            if (!st.freed) {
                LibFhirBulk.export_cancel(st.handle); // a freed handle only gives a status
                LOG.log(System.Logger.Level.DEBUG, "fhirbulk: export cancelled ({0})", st.description);
            }
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    /** Whether {@link #close()} was called. */
    public boolean isClosed() {
        return st.closed;
    }

    /**
     * Cancels the export if it is unfinished and frees it. Idempotent; any thread. A consumer
     * waiting for records (or in the middle of a batch) throws {@link CancelledException} at its
     * next step. Records of this export are invalid afterwards.
     */
    @Override
    public void close() {
        State s = st;
        try {
            if (s.closeRequested.compareAndSet(false, true)) {
                s.closed = true;
                // Wakes a consumer blocked in export_next_batch, so the lock comes free at once.
                LibFhirBulk.export_cancel(s.handle);
            }
            s.lock.lock();
            try {
                if (s.freed) {
                    return;
                }
                Batch cur = s.current;
                if (cur != null && cur.valid && s.consumer != null && s.consumer != Thread.currentThread()
                        && s.consumer.isAlive()) {
                    // Another thread is in the middle of a batch: its records' memory stays
                    // until it steps on (then it frees and throws CancelledException).
                    LOG.log(System.Logger.Level.DEBUG,
                            "fhirbulk: close deferred to the consuming thread ({0})", s.description);
                    return;
                }
                s.freeLocked();
            } finally {
                s.lock.unlock();
            }
            cleanable.clean(); // deregisters; State.run() finds it freed
            LOG.log(System.Logger.Level.DEBUG, "fhirbulk: export closed ({0})", s.description);
        } finally {
            Reference.reachabilityFence(this);
        }
    }

    private static IllegalStateException closedException() {
        return new IllegalStateException("fhirbulk: export closed");
    }

    @Override
    public String toString() {
        return "Export[" + st.description + (st.closed ? ", closed" : "") + "]";
    }
}
