package org.fhirbulk;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.NotDirectoryException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Pattern;

/**
 * Writes an export as a Parquet dataset, {@code <dir>/<Type>/part-<n>.parquet}, one table per
 * resource type, with libfhirbulk's own writer ({@code export_write_parquet}): the library
 * decodes the NDJSON into typed Arrow columns and encodes them into Parquet on up to 4 threads of
 * its own, with bounded memory. Nothing but this jar and JNA is needed: no Arrow Java, no
 * parquet-java, no Hadoop, no JVM flag (this class refers to none of them).
 *
 * <pre>{@code
 * try (Export export = FhirBulk.export(url).group("g1").start()) {
 *     Map<String, Long> rows = FhirBulkParquet.write(export, Path.of("out"));
 *     // out/Patient/part-00000.parquet, out/Observation/part-00000.parquet, ...; rows per type
 * }
 * // or with options:
 * FhirBulkParquet.write(export, dir, FhirBulkParquet.options().compression(Compression.ZSTD).overwrite(true));
 * }</pre>
 *
 * <p>Each part has the Parquet schema of its type's Arrow schema ({@link FhirBulkArrow#schema}:
 * nested groups and lists, decimals as their exact text) and carries that Arrow schema as
 * {@code ARROW:schema} with its metadata, so pyarrow, DuckDB ({@code read_parquet('out/Patient/*.parquet')}),
 * Spark and Arrow readers see the same columns. A part is written as
 * {@code .part-<n>.parquet.inprogress} and renamed when closed. Error and deleted records are not
 * written.
 *
 * <p><b>Failures.</b> The export's own failure is thrown as its {@link FhirBulkException};
 * {@link Export#cancel()} or {@link Export#close()} from another thread end the write with
 * {@link CancelledException}; an interrupt of the writing thread closes the export (which stops
 * the library's writer) and throws {@link CancelledException} with the interrupt flag set again.
 * In every one of these cases no part is left: the library removes the parts in progress and
 * this class the ones it had closed, so a dataset that is there is complete. The write waits in
 * 200 ms turns, so interrupts and cancellation are seen promptly.
 *
 * <p><b>The directory.</b> It is created if needed. One that holds parts already (a
 * {@code .parquet} file in a subdirectory) is refused with {@link FileAlreadyExistsException}
 * unless {@link Options#overwrite(boolean) overwrite(true)}, which removes them first.
 */
public final class FhirBulkParquet {
    private FhirBulkParquet() {}

    /** The column chunks' compression. */
    public enum Compression {
        /** The default: fast, and what every reader expects. */
        SNAPPY,
        /** Smaller files, slower to write (level 3). */
        ZSTD,
        /** Uncompressed. */
        NONE
    }

    /**
     * The writer's options; each one left unset takes the library's default. Setters check their
     * value ({@link IllegalArgumentException} naming the option) and return {@code this}.
     */
    public static final class Options {
        private Compression compression;
        private Long rowGroupRows;
        private Long partBytes;
        private Long maxOpenParts;
        private Long batchRows;
        private Long threads;
        private boolean overwrite;

        Options() {}

        /** {@link Compression#SNAPPY} unless told otherwise. */
        public Options compression(Compression compression) {
            if (compression == null) {
                throw new IllegalArgumentException("fhirbulk: Parquet option compression: null");
            }
            this.compression = compression;
            return this;
        }

        /** Rows per row group, at most (default 65536). */
        public Options rowGroupRows(long n) {
            rowGroupRows = count("rowGroupRows", n, 1L << 30);
            return this;
        }

        /** A part is closed, and the type's next one begun, at this size in bytes (default 512 MiB). */
        public Options partBytes(long n) {
            partBytes = count("partBytes", n, Long.MAX_VALUE);
            return this;
        }

        /** Parts open at once per writer thread, at most (default 4): opening another closes
         *  the one written to least recently. */
        public Options maxOpenParts(int n) {
            maxOpenParts = count("maxOpenParts", n, 1024);
            return this;
        }

        /** Rows the library decodes per batch before encoding it (default 2048). */
        public Options batchRows(int n) {
            batchRows = count("batchRows", n, 1L << 20);
            return this;
        }

        /** The library's decode and encode threads, 1 to 4 (default the cores, at most 4). */
        public Options threads(int n) {
            threads = count("threads", n, 4);
            return this;
        }

        /** Whether parts already in the directory are removed (true) or refused (false, the default). */
        public Options overwrite(boolean overwrite) {
            this.overwrite = overwrite;
            return this;
        }

        /** The {@code options_json} of {@code export_write_parquet}. */
        String json() {
            Map<String, Object> m = new LinkedHashMap<>();
            if (compression != null) {
                m.put("compression", compression.name().toLowerCase(Locale.ROOT));
            }
            if (rowGroupRows != null) {
                m.put("row_group_rows", rowGroupRows);
            }
            if (partBytes != null) {
                m.put("part_bytes", partBytes);
            }
            if (maxOpenParts != null) {
                m.put("max_open_parts", maxOpenParts);
            }
            if (batchRows != null) {
                m.put("batch_rows", batchRows);
            }
            if (threads != null) {
                m.put("threads", threads);
            }
            m.put("overwrite", overwrite);
            return Json.write(m);
        }

        private static long count(String name, long n, long max) {
            if (n < 1 || n > max) {
                throw new IllegalArgumentException("fhirbulk: Parquet option " + name + " must be from 1 to " + max
                        + ", not " + n);
            }
            return n;
        }

        @Override
        public String toString() {
            return "FhirBulkParquet.Options" + json();
        }
    }

    /** New options, every one at the library's default. */
    public static Options options() {
        return new Options();
    }

    /** Whether the loaded libfhirbulk has its Parquet writer (cargo feature {@code parquet}; the
     *  jar's library always has). */
    public static boolean available() {
        return LibFhirBulk.fhirbulk_has_parquet() != 0;
    }

    /** {@link #write(Export, Path, Options)} with the defaults. */
    public static Map<String, Long> write(Export export, Path directory) throws IOException {
        return write(export, directory, options());
    }

    /**
     * Writes the export's output resources into {@code directory/<Type>/part-<n>.parquet}.
     *
     * @return rows written per resource type, sorted by type
     * @throws FileAlreadyExistsException when the directory holds parts and not
     *                                    {@code overwrite(true)}
     * @throws IOException                when the directory cannot be created or read
     * @throws FhirBulkException          when the export failed (a {@link ProtocolException}
     *                                    for a line that is not a resource of its file's type);
     *                                    {@link CancelledException} when it was cancelled,
     *                                    closed or the thread interrupted
     * @throws IllegalStateException      when the export is closed, or was read already (its
     *                                    records or Arrow batches: they would be missing)
     */
    public static Map<String, Long> write(Export export, Path directory, Options options) throws IOException {
        if (export == null || directory == null || options == null) {
            throw new NullPointerException("fhirbulk: FhirBulkParquet.write needs an export, a directory and options");
        }
        if (!available()) {
            throw new FhirBulkException(LibFhirBulk.ERR_INVALID_ARGUMENT, "invalid_argument", 0, null,
                    "fhirbulk: this libfhirbulk (" + LibFhirBulk.LOCATION + ") was built without its Parquet "
                            + "writer (cargo feature `parquet`); use the jar's library", List.of());
        }
        export.checkWritable();
        Path dir = directory.toAbsolutePath().normalize();
        if (hasParts(dir)) {
            if (!options.overwrite) {
                throw new FileAlreadyExistsException(dir.toString(), null,
                        "holds Parquet parts already: choose another directory, or set overwrite(true)");
            }
            removeParts(dir); // (the library would remove the parts, not the type directories)
        }
        Files.createDirectories(dir);
        byte[] dirBytes = cString(dir.toString());
        byte[] optionBytes = cString(options.json());
        boolean[] accepted = {false};
        try {
            String summary = export.writeParquet(dirBytes, optionBytes, accepted);
            Map<String, Long> rows = new TreeMap<>();
            Object types = Json.parseObject(summary).get("types");
            if (types instanceof Map<?, ?> m) {
                m.forEach((t, v) -> {
                    Object n = v instanceof Map<?, ?> c ? c.get("rows") : null;
                    rows.put(String.valueOf(t), n instanceof Number x ? x.longValue() : 0L);
                });
            }
            return Collections.unmodifiableMap(rows);
        } catch (RuntimeException | Error e) {
            // Only once the library took the directory: before, a refusal (parts that came from
            // elsewhere since the check above) must not remove anything.
            if (accepted[0]) {
                try {
                    removeParts(dir);
                } catch (IOException io) {
                    e.addSuppressed(io);
                }
            }
            throw e;
        }
    }

    // ---- the dataset directory ----------------------------------------------------------------

    private static final Pattern PART = Pattern.compile("part-\\d+\\.parquet");
    private static final Pattern IN_PROGRESS = Pattern.compile("\\.part-\\d+\\.parquet\\.inprogress");

    /** The subdirectories of {@code dir} (none when it does not exist). */
    private static List<Path> typeDirs(Path dir) throws IOException {
        List<Path> out = new ArrayList<>();
        try (DirectoryStream<Path> s = Files.newDirectoryStream(dir, Files::isDirectory)) {
            s.forEach(out::add);
        } catch (NoSuchFileException | NotDirectoryException e) {
            return out;
        }
        return out;
    }

    /** What the library refuses without overwrite: a {@code .parquet} or {@code .parquet.inprogress}
     *  file in a subdirectory. */
    static boolean hasParts(Path dir) throws IOException {
        for (Path d : typeDirs(dir)) {
            try (DirectoryStream<Path> s = Files.newDirectoryStream(d)) {
                for (Path f : s) {
                    String n = f.getFileName().toString();
                    if (n.endsWith(".parquet") || n.endsWith(".parquet.inprogress")) {
                        return true;
                    }
                }
            }
        }
        return false;
    }

    /** The parts in progress ({@code .part-<n>.parquet.inprogress}) under {@code dir}. */
    static List<Path> inProgressParts(Path dir) throws IOException {
        List<Path> out = new ArrayList<>();
        for (Path d : typeDirs(dir)) {
            try (DirectoryStream<Path> s = Files.newDirectoryStream(d)) {
                for (Path f : s) {
                    if (IN_PROGRESS.matcher(f.getFileName().toString()).matches()) {
                        out.add(f);
                    }
                }
            }
        }
        return out;
    }

    /**
     * Removes the parts of a write that did not complete (the library removed those in progress;
     * the closed ones are this write's: the directory held none before, or overwrite removed
     * them), then the type directories left empty.
     */
    private static void removeParts(Path dir) throws IOException {
        IOException first = null;
        for (Path d : typeDirs(dir)) {
            try (DirectoryStream<Path> s = Files.newDirectoryStream(d)) {
                for (Path f : s) {
                    String n = f.getFileName().toString();
                    if (PART.matcher(n).matches() || IN_PROGRESS.matcher(n).matches()) {
                        try {
                            Files.deleteIfExists(f);
                        } catch (IOException e) {
                            if (first == null) {
                                first = e;
                            }
                        }
                    }
                }
            }
            try (DirectoryStream<Path> s = Files.newDirectoryStream(d)) {
                if (!s.iterator().hasNext()) {
                    Files.deleteIfExists(d);
                }
            } catch (IOException ignored) {
                // not empty, or gone: leave it
            }
        }
        if (first != null) {
            throw first;
        }
    }

    private static byte[] cString(String s) {
        if (s.indexOf('\0') >= 0) {
            throw new IllegalArgumentException("fhirbulk: a NUL in " + s);
        }
        byte[] utf8 = s.getBytes(StandardCharsets.UTF_8);
        byte[] out = new byte[utf8.length + 1];
        System.arraycopy(utf8, 0, out, 0, utf8.length);
        return out;
    }
}
