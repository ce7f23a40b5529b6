/*
 * ExportParquet: run a FHIR Bulk Data export with the fhirbulk Java binding straight into one
 * Parquet file per resource type (typed, nested columns decoded by libfhirbulk, handed to Arrow
 * Java without a copy, written by parquet-java without Hadoop), then print a few values of the
 * first Observation batch of a second export read as Arrow.
 *
 *   usage: java --add-opens=java.base/java.nio=ALL-UNNAMED \
 *            -cp fhirbulk-0.1.0.jar:jna-5.14.0.jar:<Arrow Java and parquet-java jars> \
 *            ExportParquet.java BASE_URL GROUP_ID|- TYPES OUT_DIR
 *
 *     BASE_URL  FHIR server base, e.g. http://127.0.0.1:8080/fhir
 *     GROUP_ID  export one Group (Group/[id]/$export); "-" for a system-level export
 *     TYPES     comma-separated resource types (_type), e.g. Patient,Observation; "-" for all
 *     OUT_DIR   where <Type>.parquet go
 *
 * The jars: org.apache.arrow:arrow-c-data, arrow-vector and arrow-memory-unsafe (or
 * arrow-memory-netty) 19.0.0, org.apache.parquet:parquet-hadoop 1.18.1, and what they depend on
 * (bindings/java/README.md "Arrow and Parquet" has the Maven snippet). No Hadoop jar is needed.
 * The --add-opens flag lets Arrow Java's memory work on Java 17+.
 *
 * Copy it freely: it uses only the public API of org.fhirbulk.
 */

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.VarCharVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.complex.StructVector;
import org.fhirbulk.ArrowBatch;
import org.fhirbulk.ArrowBatches;
import org.fhirbulk.Export;
import org.fhirbulk.ExportBuilder;
import org.fhirbulk.FhirBulk;
import org.fhirbulk.FhirBulkArrow;
import org.fhirbulk.FhirBulkException;
import org.fhirbulk.FhirBulkParquet;

public class ExportParquet {
    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: ExportParquet BASE_URL GROUP_ID|- TYPES|- OUT_DIR");
            System.exit(2);
        }
        Path out = Path.of(args[3]);
        // One allocator for everything imported from the library; closing it checks for leaks.
        try (BufferAllocator allocator = new RootAllocator()) {
            // 1. The whole export into out/<Type>.parquet, streamed batch by batch.
            try (Export export = builder(args).start()) {
                Map<String, Long> rows = FhirBulkParquet.write(export, out, allocator);
                for (Map.Entry<String, Long> e : rows.entrySet()) {
                    Path file = out.resolve(e.getKey() + ".parquet");
                    System.out.printf("%-24s %8d rows %10d bytes  %s%n", e.getKey(), e.getValue(), Files.size(file), file);
                }
            }
            // 2. Arrow batches of every type: the typed columns in Java.
            try (Export export = builder(args).start();
                    ArrowBatches batches = FhirBulkArrow.batches(export, allocator, 1000)) {
                for (ArrowBatch batch : batches) {
                    try (batch) {
                        VectorSchemaRoot root = batch.root();
                        if (batch.resourceType().equals("Observation") && root.getRowCount() > 0) {
                            VarCharVector id = (VarCharVector) root.getVector("id");
                            StructVector quantity = (StructVector) root.getVector("valueQuantity");
                            System.out.printf("first Observation batch: %d rows, id %s, valueQuantity %s%n",
                                    root.getRowCount(), id.getObject(0), quantity.getObject(0));
                        }
                    }
                }
                System.out.printf("%d Arrow batches, %d rows%n", batches.batches(), batches.rows());
            }
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
