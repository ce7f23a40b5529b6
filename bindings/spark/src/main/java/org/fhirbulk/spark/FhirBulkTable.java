package org.fhirbulk.spark;

import java.util.EnumSet;
import java.util.Set;
import org.apache.spark.sql.connector.catalog.SupportsRead;
import org.apache.spark.sql.connector.catalog.TableCapability;
import org.apache.spark.sql.connector.read.ScanBuilder;
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
        ConnectorOptions o = ConnectorOptions.parse(options);
        return () -> new FhirBulkScan(o, schema);
    }
}
