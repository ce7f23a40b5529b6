package org.fhirbulk.spark;

import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.ArrowUtils;
import org.fhirbulk.FhirBulkArrow;

/** The two table shapes. */
final class Schemas {
    private Schemas() {}

    /** Rows of every file: the resource as JSON text, where it came from, and the file's kind. */
    static final StructType ROWS = new StructType()
            .add("resource_type", DataTypes.StringType, false)
            .add("json", DataTypes.StringType, false)
            .add("file", DataTypes.IntegerType, false)
            .add("line", DataTypes.LongType, false)
            .add("kind", DataTypes.StringType, false);

    /**
     * {@code null}: {@link #ROWS}; else the engine's Arrow schema of the type (README "Arrow and
     * Parquet"), as Spark reads it through {@code ArrowColumnVector}.
     */
    static StructType of(String type) {
        if (type == null) {
            return ROWS;
        }
        try (BufferAllocator a = new RootAllocator()) {
            return ArrowUtils.fromArrowSchema(FhirBulkArrow.schema(type, a));
        }
    }
}
