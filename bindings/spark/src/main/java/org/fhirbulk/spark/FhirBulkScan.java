package org.fhirbulk.spark;

import java.net.URI;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.spark.sql.connector.read.Batch;
import org.apache.spark.sql.connector.read.InputPartition;
import org.apache.spark.sql.connector.read.PartitionReaderFactory;
import org.apache.spark.sql.connector.read.Scan;
import org.apache.spark.sql.types.StructType;
import org.fhirbulk.Export;
import org.fhirbulk.ExportBuilder;
import org.fhirbulk.FhirBulk;

/**
 * The driver's part. Planning (once per scan, when an action runs) kicks off the export with
 * {@code manifest_only}: the engine polls, takes the whole manifest (pages, retries,
 * Retry-After, auth: everything an export does) and downloads nothing. Its checkpoint and file
 * list go to the tasks in the reader factory; each file is one partition. A failure of the
 * kick-off or the polling throws the engine's exception (its code, HTTP status and the
 * server's OperationOutcome); a cancel or interrupt of the planning thread DELETEs the job.
 */
final class FhirBulkScan implements Scan, Batch {
    private static final ObjectMapper JSON = new ObjectMapper();

    private final ConnectorOptions options;
    private final StructType schema;
    /** The table's columns this scan gives (indexes into the full schema, in order). */
    private final int[] columns;
    private volatile Planned planned;

    FhirBulkScan(ConnectorOptions options, StructType schema, int[] columns) {
        this.options = options;
        this.schema = schema;
        this.columns = columns;
    }

    /** The export's checkpoint, file list and partitions, once. */
    record Planned(String checkpoint, String files, InputPartition[] partitions) {}

    @Override
    public StructType readSchema() {
        return schema;
    }

    /** No URL query (it may carry credentials), no secrets: these show in the plan and UI. */
    @Override
    public String description() {
        Map<String, Object> c = options.config;
        StringBuilder sb = new StringBuilder("fhirbulk ").append(redact(String.valueOf(c.get("base_url"))));
        sb.append(" level=").append(c.getOrDefault("level", "system"));
        if (c.get("group_id") != null) {
            sb.append(" group=").append(c.get("group_id"));
        }
        if (c.get("types") != null) {
            sb.append(" types=").append(String.join(",", castList(c.get("types"))));
        }
        if (options.type != null) {
            sb.append(" typed=").append(options.type);
        }
        Planned p = planned;
        if (p != null) {
            sb.append(" files=").append(p.partitions.length);
        }
        return sb.toString();
    }

    private static List<String> castList(Object o) {
        List<String> out = new ArrayList<>();
        if (o instanceof List<?> l) {
            for (Object x : l) {
                out.add(String.valueOf(x));
            }
        }
        return out;
    }

    static String redact(String url) {
        try {
            URI u = URI.create(url);
            return new URI(u.getScheme(), null, u.getHost(), u.getPort(), u.getPath(), null, null).toString();
        } catch (Exception e) {
            return "(a base URL that is not a URL)";
        }
    }

    @Override
    public Batch toBatch() {
        return this;
    }

    @Override
    public synchronized InputPartition[] planInputPartitions() {
        if (planned == null) {
            planned = plan();
        }
        return planned.partitions.clone();
    }

    @Override
    public synchronized PartitionReaderFactory createReaderFactory() {
        if (planned == null) {
            planned = plan();
        }
        return new ReaderFactory(options, planned.checkpoint, planned.files, columns);
    }

    /** An export builder with the options' config (shared by the driver and the tasks). */
    static ExportBuilder builder(ConnectorOptions options) {
        ExportBuilder b = FhirBulk.export(String.valueOf(options.config.get("base_url")));
        for (Map.Entry<String, Object> e : options.config.entrySet()) {
            if (!e.getKey().equals("base_url")) {
                b.option(e.getKey(), e.getValue());
            }
        }
        return b;
    }

    private Planned plan() {
        String checkpoint;
        String files;
        try (Export driver = builder(options).option("manifest_only", true).option("delete_on_cancel", true)
                .start()) {
            for (org.fhirbulk.BulkRecord r : driver) {
                throw new IllegalStateException("fhirbulk: a manifest_only export delivered a record: " + r);
            }
            checkpoint = driver.checkpoint();
            files = driver.files();
        }
        if (checkpoint == null) {
            throw new IllegalStateException("fhirbulk: the export ended without a checkpoint");
        }
        List<InputPartition> parts = new ArrayList<>();
        try {
            for (JsonNode f : JSON.readTree(files)) {
                int index = f.path("index").asInt(-1);
                String kind = f.path("kind").asText("output");
                String type = f.path("type").isTextual() ? f.path("type").asText() : null;
                if (index < 0) {
                    throw new IllegalStateException("fhirbulk: a file without an index in the file list");
                }
                if (options.type != null && !(kind.equals("output") && options.type.equals(type))) {
                    continue; // the typed table holds only that type's output files
                }
                parts.add(new FilePartition(index, kind, type));
            }
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            throw new IllegalStateException("fhirbulk: the file list is not JSON: " + e.getOriginalMessage(), e);
        }
        return new Planned(checkpoint, files, parts.toArray(new InputPartition[0]));
    }
}
