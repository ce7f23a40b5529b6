package org.fhirbulk.spark;

import java.util.Map;
import org.apache.spark.sql.connector.catalog.Table;
import org.apache.spark.sql.connector.catalog.TableProvider;
import org.apache.spark.sql.connector.expressions.Transform;
import org.apache.spark.sql.sources.DataSourceRegister;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.CaseInsensitiveStringMap;

/**
 * {@code spark.read.format("fhirbulk")}: a FHIR Bulk Data export as a DataFrame.
 *
 * <pre>{@code
 * Dataset<Row> rows = spark.read().format("fhirbulk")
 *     .option("baseUrl", "https://ehr.example.org/r4")
 *     .option("level", "group").option("groupId", "g1")
 *     .option("types", "Patient,Observation")
 *     .option("clientId", "my-client").option("privateKeyFile", "/etc/fhirbulk/key.pem")
 *     .load();                                    // resource_type, json, file, line, kind
 * Dataset<Row> obs = spark.read().format("fhirbulk")
 *     .option("baseUrl", "...").option("type", "Observation").load();   // typed columns
 * }</pre>
 *
 * <p>Loading only describes the table (no request is sent). An action plans the read: the
 * driver kicks off the export, polls and takes the manifest, and each manifest file becomes
 * one input partition, read by one task through the engine (its own token from the same
 * credentials, retries, Range resume, expired-link renewal). A task run again reads its file
 * again from the start, so Spark's retries and speculation give every record once. Each action
 * is a new export: cache the DataFrame or write it out to read it more than once.
 */
public final class FhirBulkDataSource implements TableProvider, DataSourceRegister {
    /** The name for {@code format(...)}. */
    public static final String SHORT_NAME = "fhirbulk";

    @Override
    public String shortName() {
        return SHORT_NAME;
    }

    @Override
    public StructType inferSchema(CaseInsensitiveStringMap options) {
        return Schemas.of(ConnectorOptions.parse(options).type);
    }

    @Override
    public Table getTable(StructType schema, Transform[] partitioning, Map<String, String> properties) {
        ConnectorOptions o = ConnectorOptions.parse(new CaseInsensitiveStringMap(properties));
        return new FhirBulkTable(Schemas.of(o.type), o.type);
    }
}
