package org.fhirbulk;

import java.io.IOException;
import java.util.Map;
import java.util.Set;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.dictionary.Dictionary;
import org.apache.arrow.vector.ipc.ArrowReader;
import org.apache.arrow.vector.types.pojo.Schema;

/**
 * One resource type's batches as an Arrow Java {@link ArrowReader} ({@link FhirBulkArrow#reader}):
 * the library's C stream ({@code export_arrow_stream}) imported with
 * {@code Data.importArrayStream}, whose failures this reader turns into the binding's
 * exceptions. Everything else is the imported reader's.
 */
final class ExportArrowReader extends ArrowReader {
    private final Export export;
    private final ArrowReader stream;

    ExportArrowReader(BufferAllocator allocator, Export export, ArrowReader stream) {
        super(allocator);
        this.export = export;
        this.stream = stream;
    }

    @Override
    public VectorSchemaRoot getVectorSchemaRoot() throws IOException {
        return stream.getVectorSchemaRoot();
    }

    /**
     * Loads the next batch into {@link #getVectorSchemaRoot()}; false at the end. Waits for the
     * export without a timeout ({@link Export#cancel()} or {@link Export#close()} from another
     * thread ends the wait).
     *
     * @throws CancelledException when the export was cancelled or closed
     * @throws FhirBulkException  when the export failed ({@link ProtocolException} for a line
     *                            that is not a resource of its file's type)
     */
    @Override
    public boolean loadNextBatch() throws IOException {
        try {
            return stream.loadNextBatch();
        } catch (IOException | RuntimeException e) {
            if (e instanceof FhirBulkException fe) {
                throw fe;
            }
            FhirBulkException mapped = export.arrowStreamFailure(e.getMessage());
            mapped.initCause(e);
            throw mapped;
        }
    }

    @Override
    public long bytesRead() {
        return stream.bytesRead();
    }

    @Override
    protected void closeReadSource() throws IOException {
        stream.close(); // closes its root and releases the C stream
    }

    @Override
    protected Schema readSchema() throws IOException {
        return stream.getVectorSchemaRoot().getSchema();
    }

    @Override
    public Map<Long, Dictionary> getDictionaryVectors() throws IOException {
        return stream.getDictionaryVectors();
    }

    @Override
    public Dictionary lookup(long id) {
        return stream.lookup(id);
    }

    @Override
    public Set<Long> getDictionaryIds() {
        return stream.getDictionaryIds();
    }
}
