package org.fhirbulk;

import java.io.IOException;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.parquet.conf.PlainParquetConfiguration;
import org.apache.parquet.hadoop.ParquetFileWriter;
import org.apache.parquet.hadoop.ParquetWriter;
import org.apache.parquet.hadoop.api.WriteSupport;
import org.apache.parquet.hadoop.metadata.CompressionCodecName;
import org.apache.parquet.io.LocalOutputFile;

/**
 * Streams an export into one Parquet file per resource type, batch by batch, in pure Java:
 * the typed Arrow batches of {@link FhirBulkArrow#batches} written by parquet-java
 * ({@code org.apache.parquet:parquet-hadoop}) without Hadoop at run time (this class brings its
 * own codecs and configuration; Hadoop is not on the class path it needs). The same as the
 * Python binding's {@code write_parquet}.
 *
 * <pre>{@code
 * try (BufferAllocator allocator = new RootAllocator();
 *      Export export = FhirBulk.export(url).group("g1").start()) {
 *     Map<String, Long> rows = FhirBulkParquet.write(export, Path.of("out"), allocator);
 *     // out/Patient.parquet, out/Observation.parquet, ...; rows per type
 * }
 * }</pre>
 *
 * <p>Each file has the Parquet schema of its type's Arrow schema ({@link ArrowWriteSupport}:
 * nested groups and three-level lists, decimals as their exact text) and carries the Arrow
 * schema as {@code ARROW:schema}, so pyarrow, DuckDB, Spark and Arrow readers see the same
 * columns. A type's file is written as {@code .<Type>.parquet.partial} and renamed to
 * {@code <Type>.parquet} once the export completed; when the export fails, is cancelled or
 * closed, the partial files are removed and the exception propagates (nothing half-written is
 * left to be mistaken for a complete export). A type with no rows gets no file. Error and
 * deleted records are not written (as in {@link ArrowBatches}).
 *
 * <p>Memory: the library holds at most a batch in the making per type and decode thread, and
 * parquet-java buffers each open file's row group (at most {@code batchRows} rows) until it is
 * written.
 */
public final class FhirBulkParquet {
    /**
     * Rows per batch, and at most per row group. The schemas are wide (hundreds of leaf columns,
     * most of them null); 8192 rows keep the buffered row groups small (as the Python binding).
     */
    public static final int DEFAULT_BATCH_ROWS = 8192;
    /** The compression unless told otherwise (as pyarrow's default). */
    public static final CompressionCodecName DEFAULT_COMPRESSION = CompressionCodecName.SNAPPY;

    private FhirBulkParquet() {}

    /** {@link #write(Export, Path, BufferAllocator, int, CompressionCodecName)} with the defaults. */
    public static Map<String, Long> write(Export export, Path directory, BufferAllocator allocator) throws IOException {
        return write(export, directory, allocator, DEFAULT_BATCH_ROWS, DEFAULT_COMPRESSION);
    }

    /**
     * Writes the rest of the export into {@code directory/<Type>.parquet} (the directory is
     * created if needed; existing files of the same name are replaced once the export completed).
     *
     * @param batchRows   rows per Arrow batch and at most per Parquet row group, at least 1
     * @param compression {@code UNCOMPRESSED}, {@code SNAPPY}, {@code ZSTD} or {@code GZIP}
     * @return rows written per resource type, sorted by type
     * @throws FhirBulkException     when the export failed; {@link CancelledException} when it
     *                               was cancelled or closed (no file is left then)
     * @throws IOException           when a file cannot be written
     * @throws IllegalStateException when the export is closed
     */
    public static Map<String, Long> write(Export export, Path directory, BufferAllocator allocator, int batchRows,
            CompressionCodecName compression) throws IOException {
        FhirBulkArrow.rows(batchRows);
        if (!ParquetCodecs.supports(compression)) {
            throw new IllegalArgumentException("fhirbulk: Parquet compression " + compression
                    + " is not supported (UNCOMPRESSED, SNAPPY, ZSTD, GZIP are)");
        }
        Files.createDirectories(directory);
        Map<String, TypeFile> files = new LinkedHashMap<>();
        boolean ok = false;
        Throwable failure = null;
        try (ArrowBatches batches = FhirBulkArrow.batches(export, allocator, batchRows)) {
            for (ArrowBatch b : batches) {
                try (b) {
                    TypeFile f = files.get(b.resourceType());
                    if (f == null) {
                        f = new TypeFile(directory, b.resourceType(), b.root(), batchRows, compression);
                        files.put(b.resourceType(), f);
                    }
                    f.write(b.root());
                }
            }
            ok = batches.isComplete();
        } catch (Throwable t) {
            failure = t;
            throw t;
        } finally {
            finish(files, ok, failure);
        }
        if (!ok) {
            throw new CancelledException("fhirbulk: the export ended before completing; no file written");
        }
        Map<String, Long> rows = new TreeMap<>();
        files.forEach((t, f) -> rows.put(t, f.rows));
        return Collections.unmodifiableMap(rows);
    }

    /** Closes the writers; renames the files when the export completed, else removes them. */
    private static void finish(Map<String, TypeFile> files, boolean ok, Throwable failure) throws IOException {
        IOException first = null;
        for (TypeFile f : files.values()) {
            try {
                f.writer.close();
            } catch (IOException | RuntimeException e) {
                if (failure != null) {
                    failure.addSuppressed(e);
                } else if (first == null) {
                    first = e instanceof IOException io ? io : new IOException(e);
                    ok = false;
                }
            }
        }
        for (TypeFile f : files.values()) {
            if (ok && first == null) {
                try {
                    Files.move(f.partial, f.target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                } catch (AtomicMoveNotSupportedException e) {
                    Files.move(f.partial, f.target, StandardCopyOption.REPLACE_EXISTING);
                }
            } else {
                try {
                    Files.deleteIfExists(f.partial);
                } catch (IOException e) {
                    if (failure != null) {
                        failure.addSuppressed(e);
                    }
                }
            }
        }
        if (first != null) {
            throw first;
        }
    }

    /** The file name of a type: its letters, digits, {@code _} and {@code -}. */
    static String fileStem(String resourceType) {
        StringBuilder b = new StringBuilder();
        resourceType.codePoints().filter(c -> c < 128 && (Character.isLetterOrDigit(c) || c == '_' || c == '-'))
                .forEach(b::appendCodePoint);
        return b.length() == 0 ? "unknown" : b.toString();
    }

    /** One type's file being written. */
    private static final class TypeFile {
        final Path partial;
        final Path target;
        final ArrowWriteSupport support;
        final ParquetWriter<Integer> writer;
        long rows;

        TypeFile(Path dir, String type, VectorSchemaRoot first, int batchRows, CompressionCodecName compression)
                throws IOException {
            String stem = fileStem(type);
            this.partial = dir.resolve("." + stem + ".parquet.partial");
            this.target = dir.resolve(stem + ".parquet");
            this.support = new ArrowWriteSupport(first.getSchema());
            this.writer = new Builder(new LocalOutputFile(partial), support)
                    .withConf(new PlainParquetConfiguration())
                    .withCodecFactory(new ParquetCodecs())
                    .withCompressionCodec(compression)
                    .withWriteMode(ParquetFileWriter.Mode.OVERWRITE)
                    .withRowGroupRowCountLimit(batchRows)
                    .build();
        }

        void write(VectorSchemaRoot root) throws IOException {
            if (!root.getSchema().equals(support.arrowSchema())) {
                throw new IllegalStateException("fhirbulk: a batch of another schema for " + target.getFileName());
            }
            support.setBatch(root);
            int n = root.getRowCount();
            for (int i = 0; i < n; i++) {
                writer.write(i);
            }
            rows += n;
        }
    }

    /** parquet-java's builder for a given WriteSupport. */
    private static final class Builder extends ParquetWriter.Builder<Integer, Builder> {
        private final ArrowWriteSupport support;

        Builder(LocalOutputFile file, ArrowWriteSupport support) {
            super(file);
            this.support = support;
        }

        @Override
        protected Builder self() {
            return this;
        }

        @Override
        protected WriteSupport<Integer> getWriteSupport(org.apache.parquet.conf.ParquetConfiguration conf) {
            return support;
        }

        @Override
        protected WriteSupport<Integer> getWriteSupport(org.apache.hadoop.conf.Configuration conf) {
            return support;
        }
    }
}
