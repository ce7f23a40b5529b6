package org.fhirbulk.spark;

import java.util.Iterator;
import java.util.Locale;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.connector.read.PartitionReader;
import org.apache.spark.unsafe.types.UTF8String;
import org.fhirbulk.Export;
import org.fhirbulk.Record;

/** One file's records as rows of {@link Schemas#ROWS}. */
final class RowReader implements PartitionReader<InternalRow> {
    private final Export export;
    private final Iterator<Record> records;
    private final UTF8String kind;
    private InternalRow row;

    RowReader(ReaderFactory f, FilePartition p) {
        export = f.start(p);
        f.watch(export, p);
        records = export.iterator();
        kind = UTF8String.fromString(p.kind().toLowerCase(Locale.ROOT));
    }

    @Override
    public boolean next() {
        if (!records.hasNext()) {
            return false;
        }
        Record r = records.next();
        row = new GenericInternalRow(new Object[] {UTF8String.fromString(r.resourceType()),
                UTF8String.fromBytes(r.bytes()), r.fileIndex(), r.line(), kind});
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
