package org.fhirbulk.spark;

import java.util.EnumSet;
import java.util.Set;
import org.apache.spark.sql.connector.catalog.SupportsRead;
import org.apache.spark.sql.connector.catalog.TableCapability;
import org.apache.spark.sql.connector.read.Scan;
import org.apache.spark.sql.connector.read.ScanBuilder;
import org.apache.spark.sql.connector.read.SupportsPushDownRequiredColumns;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.CaseInsensitiveStringMap;

/** The export as a table: rows of every file, or one resource type's typed columns. */
final class FhirBulkTable implements SupportsRead {
    private final StructType schema;
    private final String type;

    FhirBulkTable(StructType schema, String type) {
        this.schema = schema;
        this.type = type;
    }

    @Override
    public String name() {
        return type == null ? "fhirbulk" : "fhirbulk " + type;
    }

    @Override
    @SuppressWarnings("deprecation")
    public StructType schema() {
        return schema;
    }

    @Override
    public Set<TableCapability> capabilities() {
        return EnumSet.of(TableCapability.BATCH_READ);
    }

    @Override
    public ScanBuilder newScanBuilder(CaseInsensitiveStringMap options) {
        return new Builder(ConnectorOptions.parse(options), schema);
    }

    /**
     * Prunes top-level columns: a task hands Spark only the columns the query reads (Spark
     * projects every column a scan gives, and with a few hundred nested FHIR columns that costs
     * more than the read). Nested fields are not pruned (the documented partial pruning): a
     * struct column comes whole.
     */
    static final class Builder implements ScanBuilder, SupportsPushDownRequiredColumns {
        private final ConnectorOptions options;
        private final StructType full;
        private int[] columns;

        Builder(ConnectorOptions options, StructType full) {
            this.options = options;
            this.full = full;
            this.columns = java.util.stream.IntStream.range(0, full.fields().length).toArray();
        }

        @Override
        public void pruneColumns(StructType required) {
            java.util.Set<String> names = new java.util.HashSet<>(java.util.Arrays.asList(required.fieldNames()));
            columns = java.util.stream.IntStream.range(0, full.fields().length)
                    .filter(i -> names.contains(full.fields()[i].name())).toArray();
        }

        @Override
        public Scan build() {
            StructType read = new StructType();
            for (int i : columns) {
                read = read.add(full.fields()[i]);
            }
            return new FhirBulkScan(options, read, columns.clone());
        }
    }
}
