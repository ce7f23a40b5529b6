package org.fhirbulk.spark;

import java.io.IOException;
import java.util.List;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.FieldVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.ipc.ArrowReader;
import org.apache.spark.sql.connector.read.PartitionReader;
import org.apache.spark.sql.vectorized.ArrowColumnVector;
import org.apache.spark.sql.vectorized.ColumnVector;
import org.apache.spark.sql.vectorized.ColumnarBatch;
import org.fhirbulk.Export;
import org.fhirbulk.FhirBulkArrow;

/**
 * One output file of the typed table: the engine decodes its lines into Arrow batches (the C
 * stream of {@code export_arrow_stream}), which Spark reads through {@link ArrowColumnVector}s
 * without a conversion per row.
 */
final class ColumnarReader implements PartitionReader<ColumnarBatch> {
    private final BufferAllocator allocator = new RootAllocator();
    private final Export export;
    private final ArrowReader reader;
    private final int[] columns;
    private ColumnarBatch batch;

    ColumnarReader(ReaderFactory f, FilePartition p) {
        Export e = null;
        ArrowReader r = null;
        try {
            e = f.start(p);
            f.watch(e, p);
            r = FhirBulkArrow.reader(e, f.options.type, allocator, f.options.batchRows);
        } catch (RuntimeException | Error t) {
            if (e != null) {
                e.close();
            }
            allocator.close();
            throw t;
        }
        export = e;
        reader = r;
        columns = f.columns;
    }

    @Override
    public boolean next() throws IOException {
        if (!reader.loadNextBatch()) {
            return false;
        }
        VectorSchemaRoot root = reader.getVectorSchemaRoot();
        List<FieldVector> vectors = root.getFieldVectors();
        ColumnVector[] cols = new ColumnVector[columns.length];
        for (int i = 0; i < cols.length; i++) {
            cols[i] = new RootColumn(vectors.get(columns[i]));
        }
        batch = new ColumnarBatch(cols, root.getRowCount());
        return true;
    }

    /**
     * A column of the reader's root, which the next batch reloads and {@link #close()} frees.
     * Spark closes a batch's columns when it is done with the batch
     * ({@code ColumnarBatch.closeIfFreeable}, in generated code); closing an Arrow struct or list
     * vector drops its children, and the next batch could not be loaded into it.
     */
    static final class RootColumn extends ArrowColumnVector {
        RootColumn(org.apache.arrow.vector.ValueVector v) {
            super(v);
        }

        @Override
        public void closeIfFreeable() {}

        @Override
        public void close() {}
    }

    @Override
    public ColumnarBatch get() {
        return batch;
    }

    @Override
    public void close() throws IOException {
        try {
            reader.close();
        } finally {
            export.close();
            allocator.close();
        }
    }
}
