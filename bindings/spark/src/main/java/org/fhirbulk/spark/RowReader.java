package org.fhirbulk.spark;

import java.util.Iterator;
import java.util.Locale;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.connector.read.PartitionReader;
import org.apache.spark.unsafe.types.UTF8String;
import org.fhirbulk.Export;
import org.fhirbulk.BulkRecord;

/** One file's records as rows of {@link Schemas#ROWS}. */
final class RowReader implements PartitionReader<InternalRow> {
    private final Export export;
    private final Iterator<BulkRecord> records;
    private final UTF8String kind;
    private final int[] columns;
    private InternalRow row;

    RowReader(ReaderFactory f, FilePartition p) {
        export = f.start(p);
        f.watch(export, p);
        records = export.iterator();
        kind = UTF8String.fromString(p.kind().toLowerCase(Locale.ROOT));
        columns = f.columns;
    }

    @Override
    public boolean next() {
        if (!records.hasNext()) {
            return false;
        }
        BulkRecord r = records.next();
        Object[] values = new Object[columns.length];
        for (int i = 0; i < values.length; i++) {
            // The columns of Schemas.ROWS, those the query reads.
            values[i] = switch (columns[i]) {
                case 0 -> UTF8String.fromString(r.resourceType());
                case 1 -> UTF8String.fromBytes(r.bytes());
                case 2 -> r.fileIndex();
                case 3 -> r.line();
                default -> kind;
            };
        }
        row = new GenericInternalRow(values);
        return true;
    }

    @Override
    public InternalRow get() {
        return row;
    }

    @Override
    public void close() {
        export.close();
    }
}
