package org.fhirbulk;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Stream;

/**
 * Records per second through the binding, next to a pure-Java baseline reading the same NDJSON
 * from local files. Not part of the test run:
 *
 * <pre>
 *   cd bindings/java
 *   mvn -q test-compile exec:exec@bench [-Dbench.patients=20000 -Dbench.rounds=5]
 * </pre>
 *
 * (a JVM of its own with a 2 GiB heap; the arguments are PATIENTS ROUNDS).
 *
 * Uses target/release/fhirbulk-sandbox when present (FHIRBULK_SANDBOX_BIN overrides).
 *
 * <p>With {@code --base URL --local DIR [--runs N]} (what {@code bench/java_bench.sh} runs for
 * {@code bench/run.py}) it starts no sandbox: it compares a system-level export of URL through
 * the binding ({@code json()} per record) with {@link #baseline} over the {@code *.ndjson} files
 * of DIR, and prints one JSON object on stdout ({@link #compare}).
 *
 * <ol>
 *   <li>end to end: a system-level export over HTTP from the sandbox, {@code json()} per record;
 *   <li>binding only: the same export with every record already downloaded and buffered in the
 *       library ({@code buffer_chunks} large, wait for state DONE), then timed consumption —
 *       {@code json()} (a String per record), {@code buffer()} (no copy) and metadata only;
 *   <li>baseline: {@link BufferedReader#readLine()} over the same NDJSON from local files
 *       (downloaded once via HttpClient; in the page cache);
 *   <li>for scale: one {@code export_next_record} call per record (what batching avoids), and
 *       parsing each record with the binding's small JSON parser (a stand-in for the JSON parsing
 *       every consumer does).
 * </ol>
 */
public final class Bench {
    interface Body {
        long run() throws Exception;
    }

    /** Untimed preparation, then the timed part. */
    interface Setup<T> {
        T prepare() throws Exception;
    }

    interface Timed<T> {
        long run(T prepared) throws Exception;
    }

    /** Untimed clean-up (closing an export frees ~100 MB of buffered chunks: not consumption). */
    interface Teardown<T> {
        void done(T prepared) throws Exception;
    }

    private static long sink;

    public static void main(String[] args) throws Exception {
        if (args.length > 0 && args[0].startsWith("--")) {
            System.exit(compare(args, System.out, System.err));
        }
        int patients = args.length > 0 ? Integer.parseInt(args[0]) : 20_000;
        int rounds = args.length > 1 ? Integer.parseInt(args[1]) : 5;
        Path release = Sandbox.repoRoot().resolve("target/release/fhirbulk-sandbox");
        String env = System.getenv("FHIRBULK_SANDBOX_BIN");
        Path bin = env != null && !env.isBlank() ? Path.of(env)
                : Files.isExecutable(release) ? release : Sandbox.binary();
        System.out.printf("fhirbulk %s (%s), Java %s, %d cores%n", FhirBulk.version(), FhirBulk.libraryLocation(),
                System.getProperty("java.version"), Runtime.getRuntime().availableProcessors());
        System.out.printf("sandbox %s, %d patients, best of %d rounds%n", bin, patients, rounds);
        try (Sandbox sb = Sandbox.start(bin, patients, 50_000)) {
            String url = sb.url("polls=0");
            long expected = sb.truth("system", null, null).values().stream().mapToLong(Long::longValue).sum();

            // Download the files once (the baseline reads them locally).
            Path dir = Files.createTempDirectory("fhirbulk-bench");
            List<Path> files = new ArrayList<>();
            long bytes;
            try (Export e = FhirBulk.export(url).start()) {
                bytes = e.stream().mapToLong(BulkRecord::length).sum();
                files = download(e.manifest(), dir);
            }
            double mb = bytes / 1e6;
            System.out.printf("%d records, %.1f MB of NDJSON (%.0f bytes per record), %d files%n%n", expected, mb,
                    (double) bytes / expected, files.size());

            List<Path> fs = files;
            System.out.printf("%-46s %14s %9s %8s %8s%n", "", "records/s", "MB/s", "vs (1)", "vs (2)");
            double base = best(rounds, expected, () -> baseline(fs));
            double split = best(rounds, expected, () -> baselineBytes(fs));
            base1 = base;
            base2 = split;
            row("(1) pure Java: BufferedReader.readLine", base, expected, mb, base);
            row("(2) pure Java: bytes split on \\n, new String", split, expected, mb, base);

            double e2e = best(rounds, expected, () -> {
                try (Export e = FhirBulk.export(url).start()) {
                    return consume(e, 0);
                }
            });
            row("binding end to end: HTTP + json()", e2e, expected, mb, base);

            double json = best(rounds, expected, () -> buffered(url), e -> consume(e, 0), Export::close);
            row("binding, buffered: json() per record", json, expected, mb, base);
            double buf = best(rounds, expected, () -> buffered(url), e -> consume(e, 1), Export::close);
            row("binding, buffered: buffer() per record", buf, expected, mb, base);
            double meta = best(rounds, expected, () -> buffered(url), e -> consume(e, 2), Export::close);
            row("binding, buffered: metadata only", meta, expected, mb, base);

            double raw = best(rounds, expected, () -> bufferedHandle(url), Bench::rawBatches,
                    LibFhirBulk::export_free);
            row("raw export_next_batch loop (counts only)", raw, expected, mb, base);
            double single = best(rounds, expected, () -> bufferedHandle(url), Bench::perRecordCalls,
                    LibFhirBulk::export_free);
            row("one export_next_record call per record", single, expected, mb, base);

            double parse = best(rounds, expected, () -> parseAll(fs));
            System.out.println();
            System.out.printf("binding overhead per record (buffered, json()): %.0f ns; JSON parsing per record "
                    + "(binding's small parser, Maps): %.0f ns%n",
                    1e9 / json, 1e9 / parse);
            System.out.printf("binding overhead per record (buffered, metadata only): %.0f ns; per-record native "
                    + "calls: %.0f ns%n", 1e9 / meta, 1e9 / single);
            for (Path f : files) {
                Files.deleteIfExists(f);
            }
            Files.deleteIfExists(dir);
        }
    }

    // ---- bench/java_bench.sh: --base URL --local DIR [--runs N] ------------------------------

    /**
     * One timed run: records, the NDJSON bytes behind them (newlines included), wall seconds,
     * CPU seconds of the whole process (the library's download threads, GC and JIT included) and
     * of the iterating thread, and for the binding the seconds to the first record (kick-off and
     * status polling; negative: not measured).
     */
    record Run(long records, long bytes, double seconds, double cpuSeconds, double threadCpuSeconds,
            double firstRecordSeconds) {
        double rate() {
            return seconds > 0 ? records / seconds : 0;
        }

        String json() {
            return String.format(Locale.ROOT, "{\"records\": %d, \"bytes\": %d, \"seconds\": %.6f, "
                    + "\"records_per_s\": %.1f, \"cpu_seconds\": %.6f, \"thread_cpu_seconds\": %.6f%s}",
                    records, bytes, seconds, rate(), cpuSeconds, threadCpuSeconds, firstRecordSeconds < 0 ? ""
                            : String.format(Locale.ROOT, ", \"first_record_seconds\": %.6f", firstRecordSeconds));
        }
    }

    /** CPU time of this process (all threads), in ns. */
    static long processCpuNanos() {
        return ((com.sun.management.OperatingSystemMXBean) java.lang.management.ManagementFactory
                .getOperatingSystemMXBean()).getProcessCpuTime();
    }

    static long threadCpuNanos() {
        return java.lang.management.ManagementFactory.getThreadMXBean().getCurrentThreadCpuTime();
    }

    static final String USAGE = "usage: java_bench.sh --base URL --local DIR [--runs N]";

    /**
     * The benchmark part of {@code bench/run.py}: a system-level export of {@code --base} through
     * the binding against a pure-Java read of the {@code *.ndjson} files in {@code --local} (the
     * same export's output), both touching every record as a String (sum of lengths). Best of
     * {@code --runs} (default 1) each, after one untimed warm-up of each when runs &gt; 1. Prints
     * {@code {"binding": {...}, "local": {...}, "ratio": x}} on {@code out}, progress on
     * {@code err}.
     *
     * <p>Each side gives {@code records}, {@code bytes} (the NDJSON bytes behind the records,
     * newlines included: record bytes plus one each, for the local files their sizes),
     * {@code seconds} (wall), {@code records_per_s}, {@code cpu_seconds} (the whole process, the
     * library's download threads included) and {@code thread_cpu_seconds} (the iterating thread);
     * the binding also {@code first_record_seconds}. The binding's seconds run from
     * {@code start()} to the end of the iteration, so they include the kick-off and status
     * polling: point URL at a server that answers the first status poll with the manifest (the
     * sandbox: {@code {root}/x/polls=0/fhir}), or the poll interval shows in them.
     *
     * @return the exit code: 0, 1 when the record counts differ, 2 on bad arguments
     */
    static int compare(String[] args, PrintStream out, PrintStream err) throws Exception {
        String base = null;
        Path local = null;
        int runs = 1;
        try {
            for (int i = 0; i < args.length; i++) {
                String a = args[i];
                switch (a) {
                    case "--base" -> base = args[++i];
                    case "--local" -> local = Path.of(args[++i]);
                    case "--runs" -> runs = Integer.parseInt(args[++i]);
                    case "-h", "--help" -> {
                        out.println(USAGE);
                        return 0;
                    }
                    default -> throw new IllegalArgumentException("unknown argument: " + a);
                }
            }
            if (base == null || local == null || runs < 1) {
                throw new IllegalArgumentException("--base and --local are required; --runs >= 1");
            }
            if (!Files.isDirectory(local)) {
                throw new IllegalArgumentException("--local " + local + ": not a directory");
            }
        } catch (RuntimeException e) {
            err.println("java_bench: " + (e instanceof ArrayIndexOutOfBoundsException ? "missing value" : e.getMessage()));
            err.println(USAGE);
            return 2;
        }
        List<Path> files;
        try (Stream<Path> s = Files.list(local)) {
            files = s.filter(f -> f.getFileName().toString().endsWith(".ndjson")).sorted().toList();
        }
        err.printf("java_bench: fhirbulk %s (%s), Java %s, %d cores; %s vs %d local files in %s, best of %d%n",
                FhirBulk.version(), FhirBulk.libraryLocation(), System.getProperty("java.version"),
                Runtime.getRuntime().availableProcessors(), base, files.size(), local, runs);
        Run bestBinding = null;
        Run bestLocal = null;
        for (int i = runs > 1 ? 0 : 1; i <= runs; i++) {
            String what = i == 0 ? "warm-up" : "run " + i;
            Run b = bindingRun(base);
            err.printf("java_bench: %-8s binding %s%n", what, b.json());
            Run l = localRun(files);
            err.printf("java_bench: %-8s local   %s%n", what, l.json());
            if (i > 0) {
                bestBinding = bestBinding == null || b.rate() > bestBinding.rate() ? b : bestBinding;
                bestLocal = bestLocal == null || l.rate() > bestLocal.rate() ? l : bestLocal;
            }
        }
        double ratio = bestLocal.rate() > 0 ? bestBinding.rate() / bestLocal.rate() : 0;
        out.println("{\"binding\": " + bestBinding.json() + ", \"local\": " + bestLocal.json()
                + String.format(Locale.ROOT, ", \"ratio\": %.4f}", ratio));
        out.flush();
        if (bestBinding.records() != bestLocal.records()) {
            err.printf("java_bench: record counts differ: binding %d, local %d%n", bestBinding.records(),
                    bestLocal.records());
            return 1;
        }
        return 0;
    }

    /** A system-level export through the binding, a String per record. */
    static Run bindingRun(String base) {
        long c0 = processCpuNanos();
        long tc0 = threadCpuNanos();
        long t0 = System.nanoTime();
        long first = -1;
        long n = 0;
        long bytes = 0;
        long acc = 0;
        long end;
        try (Export e = FhirBulk.export(base).start()) {
            for (BulkRecord r : e) {
                if (n++ == 0) {
                    first = System.nanoTime();
                }
                bytes += r.length() + 1;
                acc += r.json().length();
            }
            end = System.nanoTime();
        }
        long tc = threadCpuNanos() - tc0;
        long c = processCpuNanos() - c0;
        sink += acc;
        return new Run(n, bytes, (end - t0) / 1e9, c / 1e9, tc / 1e9, first < 0 ? 0 : (first - t0) / 1e9);
    }

    /** The pure-Java baseline over local files, a String per line ({@link #baseline}). */
    static Run localRun(List<Path> files) throws IOException {
        long bytes = 0;
        for (Path f : files) {
            bytes += Files.size(f);
        }
        long c0 = processCpuNanos();
        long tc0 = threadCpuNanos();
        long t0 = System.nanoTime();
        long n = baseline(files);
        long ns = System.nanoTime() - t0;
        return new Run(n, bytes, ns / 1e9, (processCpuNanos() - c0) / 1e9, (threadCpuNanos() - tc0) / 1e9, -1);
    }

    private static double base1;
    private static double base2;

    static void row(String what, double rate, long records, double mb, double base) {
        System.out.printf("%-46s %14.0f %9.0f %8.2f %8.2f%n", what, rate, mb * rate / records, rate / base1,
                rate / base2);
    }

    /** Best records/s of {@code rounds} timed runs, after one warm-up run. */
    static double best(int rounds, long expected, Body body) throws Exception {
        return best(rounds, expected, () -> null, x -> body.run(), x -> { });
    }

    static <T> double best(int rounds, long expected, Setup<T> setup, Timed<T> timed, Teardown<T> teardown)
            throws Exception {
        double best = 0;
        for (int i = 0; i <= rounds; i++) {
            T prepared = setup.prepare();
            long t0 = System.nanoTime();
            long n = timed.run(prepared);
            long ns = System.nanoTime() - t0;
            teardown.done(prepared);
            if (n != expected) {
                throw new IllegalStateException("expected " + expected + " records, got " + n);
            }
            if (i > 0) {
                best = Math.max(best, n * 1e9 / ns);
            }
        }
        return best;
    }

    /** An export whose records are all downloaded and buffered in the library already. */
    static Export buffered(String url) throws InterruptedException {
        Export e = FhirBulk.export(url).option("buffer_chunks", 4096).option("concurrency", 4).start();
        while (e.progress().state() != Progress.State.DONE) {
            if (e.progress().state().isTerminal()) {
                throw new IllegalStateException("export ended: " + e.progress());
            }
            Thread.sleep(5);
        }
        return e;
    }

    /** Iterates every record. mode 0: json(); 1: buffer(); 2: metadata only. */
    static long consume(Export e, int mode) {
        long n = 0;
        long acc = 0;
        for (BulkRecord r : e) {
            n++;
            switch (mode) {
                case 0 -> acc += r.json().length();
                case 1 -> acc += r.buffer().get(1);
                default -> acc += r.line();
            }
        }
        sink += acc;
        return n;
    }

    static long baseline(List<Path> files) throws IOException {
        long n = 0;
        long acc = 0;
        for (Path f : files) {
            try (BufferedReader r = new BufferedReader(
                    new InputStreamReader(Files.newInputStream(f), StandardCharsets.UTF_8), 1 << 16)) {
                String line;
                while ((line = r.readLine()) != null) {
                    if (!line.isEmpty()) {
                        n++;
                        acc += line.length();
                    }
                }
            }
        }
        sink += acc;
        return n;
    }

    /** A faster pure-Java reader: 1 MiB reads, split on '\n', one String per line. */
    static long baselineBytes(List<Path> files) throws IOException {
        long n = 0;
        long acc = 0;
        byte[] buf = new byte[1 << 20];
        for (Path f : files) {
            try (InputStream in = Files.newInputStream(f)) {
                int have = 0;
                while (true) {
                    int got = in.read(buf, have, buf.length - have);
                    if (got < 0) {
                        break;
                    }
                    have += got;
                    int start = 0;
                    for (int i = 0; i < have; i++) {
                        if (buf[i] == '\n') {
                            if (i > start) {
                                n++;
                                acc += new String(buf, start, i - start, StandardCharsets.UTF_8).length();
                            }
                            start = i + 1;
                        }
                    }
                    System.arraycopy(buf, start, buf, 0, have - start);
                    have -= start;
                    if (have == buf.length) {
                        buf = java.util.Arrays.copyOf(buf, buf.length * 2);
                    }
                }
                if (have > 0) {
                    n++;
                    acc += new String(buf, 0, have, StandardCharsets.UTF_8).length();
                }
            }
        }
        sink += acc;
        return n;
    }

    static long parseAll(List<Path> files) throws IOException {
        long n = 0;
        for (Path f : files) {
            try (BufferedReader r = Files.newBufferedReader(f)) {
                String line;
                while ((line = r.readLine()) != null) {
                    if (!line.isEmpty()) {
                        n++;
                        sink += ((Map<?, ?>) Json.parse(line)).size();
                    }
                }
            }
        }
        return n;
    }

    /** The C ABI directly: export_start, wait for DONE (untimed). */
    static long bufferedHandle(String url) throws InterruptedException {
        String cfg = "{\"base_url\":" + Json.write(url) + ",\"buffer_chunks\":4096}\0";
        long[] h = new long[1];
        if (LibFhirBulk.export_start(cfg.getBytes(StandardCharsets.UTF_8), h) != LibFhirBulk.OK) {
            throw new IllegalStateException("export_start failed");
        }
        byte[] progress = new byte[LibFhirBulk.PROGRESS_SIZE];
        while (true) {
            LibFhirBulk.export_poll(h[0], progress);
            if (progress[0] >= 3) {
                break;
            }
            Thread.sleep(5);
        }
        return h[0];
    }

    /** The floor: export_next_batch calls from Java, reading only the count. */
    static long rawBatches(long h) {
        Memory out = new Memory(LibFhirBulk.BATCH_SIZE);
        long addr = Pointer.nativeValue(out);
        ByteBuffer view = out.getByteBuffer(0, LibFhirBulk.BATCH_SIZE).order(ByteOrder.nativeOrder());
        long n = 0;
        int s;
        while ((s = LibFhirBulk.export_next_batch(h, Export.BATCH_MAX, -1, addr)) == LibFhirBulk.RECORD) {
            n += view.getLong(LibFhirBulk.BATCH_COUNT);
        }
        if (s != LibFhirBulk.END) {
            throw new IllegalStateException("export_next_batch: " + LibFhirBulk.statusName(s));
        }
        return n;
    }

    /** One export_next_record call per record (what the batch call avoids). */
    static long perRecordCalls(long h) {
        Memory rec = new Memory(LibFhirBulk.RECORD_SIZE);
        long addr = Pointer.nativeValue(rec);
        ByteBuffer view = rec.getByteBuffer(0, LibFhirBulk.RECORD_SIZE).order(ByteOrder.nativeOrder());
        long n = 0;
        long acc = 0;
        int s;
        while ((s = LibFhirBulk.export_next_record(h, -1, addr)) == LibFhirBulk.RECORD) {
            n++;
            acc += view.getLong(LibFhirBulk.RECORD_LEN);
        }
        if (s != LibFhirBulk.END) {
            throw new IllegalStateException("export_next_record: " + LibFhirBulk.statusName(s));
        }
        sink += acc;
        return n;
    }

    @SuppressWarnings("unchecked")
    static List<Path> download(String manifest, Path dir) throws IOException, InterruptedException {
        HttpClient http = HttpClient.newHttpClient();
        List<Path> out = new ArrayList<>();
        int i = 0;
        for (Object o : (List<Object>) Json.parseObject(manifest).get("output")) {
            String url = (String) ((Map<String, Object>) o).get("url");
            Path f = dir.resolve("file-" + (i++) + ".ndjson");
            HttpResponse<InputStream> r = http.send(HttpRequest.newBuilder(URI.create(url))
                    .header("Accept", "application/fhir+ndjson").build(), HttpResponse.BodyHandlers.ofInputStream());
            if (r.statusCode() != 200) {
                throw new IOException("GET " + url + ": HTTP " + r.statusCode());
            }
            try (InputStream in = r.body()) {
                Files.copy(in, f);
            }
            out.add(f);
        }
        return out;
    }
}
