/*
 * ExportParquet: run a FHIR Bulk Data export with the fhirbulk Java binding straight into a
 * Parquet dataset, OUT_DIR/<Type>/part-<n>.parquet (one table per resource type: typed, nested
 * columns decoded and encoded by libfhirbulk's own writer on its threads), then list what it
 * wrote.
 *
 *   usage: java -cp fhirbulk-0.1.0.jar:jna-5.14.0.jar \
 *            ExportParquet.java BASE_URL GROUP_ID|- TYPES|- OUT_DIR [snappy|zstd|none] [overwrite]
 *
 *     BASE_URL  FHIR server base, e.g. http://127.0.0.1:8080/fhir
 *     GROUP_ID  export one Group (Group/[id]/$export); "-" for a system-level export
 *     TYPES     comma-separated resource types (_type), e.g. Patient,Observation; "-" for all
 *     OUT_DIR   the dataset's directory (refused when it holds parts, unless "overwrite")
 *
 * Nothing but the jar and JNA: no Arrow Java, no parquet-java, no Hadoop, no JVM flag. Read the
 * dataset with DuckDB (select * from read_parquet('OUT_DIR/Observation/*.parquet')), pandas
 * (pd.read_parquet("OUT_DIR/Observation")), Spark (spark.read.parquet("OUT_DIR/Observation")), ...
 *
 * Copy it freely: it uses only the public API of org.fhirbulk.
 */

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Stream;
import org.fhirbulk.Export;
import org.fhirbulk.ExportBuilder;
import org.fhirbulk.FhirBulk;
import org.fhirbulk.FhirBulkException;
import org.fhirbulk.FhirBulkParquet;

public class ExportParquet {
    public static void main(String[] args) throws Exception {
        if (args.length < 4 || args.length > 6) {
            System.err.println("usage: ExportParquet BASE_URL GROUP_ID|- TYPES|- OUT_DIR [snappy|zstd|none] [overwrite]");
            System.exit(2);
        }
        Path out = Path.of(args[3]);
        FhirBulkParquet.Options options = FhirBulkParquet.options();
        for (int i = 4; i < args.length; i++) {
            if (args[i].equals("overwrite")) {
                options.overwrite(true);
            } else {
                options.compression(FhirBulkParquet.Compression.valueOf(args[i].toUpperCase(Locale.ROOT)));
            }
        }
        long t0 = System.nanoTime();
        try (Export export = builder(args).start()) {
            Map<String, Long> rows = FhirBulkParquet.write(export, out, options);
            double seconds = (System.nanoTime() - t0) / 1e9;
            long total = 0;
            for (Map.Entry<String, Long> e : rows.entrySet()) {
                Path dir = out.resolve(e.getKey());
                long parts;
                long bytes = 0;
                try (Stream<Path> s = Files.list(dir)) {
                    Path[] files = s.filter(p -> p.getFileName().toString().endsWith(".parquet")).toArray(Path[]::new);
                    parts = files.length;
                    for (Path p : files) {
                        bytes += Files.size(p);
                    }
                }
                total += e.getValue();
                System.out.printf("%-24s %8d rows %3d parts %10d bytes  %s%n", e.getKey(), e.getValue(), parts, bytes, dir);
            }
            System.out.printf("%d rows in %.2f s%n", total, seconds);
        } catch (FhirBulkException e) {
            System.err.printf("export failed (%s, code %d): %s%n", e.name(), e.code(), e.getMessage());
            System.exit(1);
        }
    }

    static ExportBuilder builder(String[] args) {
        ExportBuilder b = FhirBulk.export(args[0]);
        if (args[1].equals("-")) {
            b.system();
        } else {
            b.group(args[1]);
        }
        if (!args[2].equals("-")) {
            b.types(args[2].split(","));
        }
        return b;
    }
}
