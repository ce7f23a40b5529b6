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
    }

    @Override
    public boolean next() throws IOException {
        if (!reader.loadNextBatch()) {
            return false;
        }
        VectorSchemaRoot root = reader.getVectorSchemaRoot();
        List<FieldVector> vectors = root.getFieldVectors();
        ColumnVector[] cols = new ColumnVector[vectors.size()];
        for (int i = 0; i < cols.length; i++) {
            cols[i] = new ArrowColumnVector(vectors.get(i));
        }
        // The vectors belong to the reader's root (reloaded by the next batch): the batch is
        // not closed, the reader is.
        batch = new ColumnarBatch(cols, root.getRowCount());
        return true;
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
