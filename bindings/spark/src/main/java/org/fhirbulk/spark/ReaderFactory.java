package org.fhirbulk.spark;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.spark.TaskContext;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.connector.read.InputPartition;
import org.apache.spark.sql.connector.read.PartitionReader;
import org.apache.spark.sql.connector.read.PartitionReaderFactory;
import org.apache.spark.sql.vectorized.ColumnarBatch;
import org.fhirbulk.Export;

/**
 * What every task of a scan shares (sent once per stage): the options' config, the driver's
 * checkpoint and file list. A task starts its own export from them with {@code only_files}
 * set to its file: no new kick-off, and the records of that file from its first line, so an
 * attempt run again (a retry, speculation) reads the same records and Spark keeps one
 * attempt's output.
 */
final class ReaderFactory implements PartitionReaderFactory {
    private static final long serialVersionUID = 1L;
    private static final System.Logger LOG = System.getLogger("org.fhirbulk.spark");

    final ConnectorOptions options;
    final String checkpoint;
    final String files;
    /** The columns of the table the scan gives (indexes, in order). */
    final int[] columns;

    ReaderFactory(ConnectorOptions options, String checkpoint, String files, int[] columns) {
        this.options = options;
        this.checkpoint = checkpoint;
        this.files = files;
        this.columns = columns;
    }

    @Override
    public boolean supportColumnarReads(InputPartition partition) {
        return options.type != null;
    }

    @Override
    public PartitionReader<InternalRow> createReader(InputPartition partition) {
        return new RowReader(this, (FilePartition) partition);
    }

    @Override
    public PartitionReader<ColumnarBatch> createColumnarReader(InputPartition partition) {
        return new ColumnarReader(this, (FilePartition) partition);
    }

    /** The task's export of one file (the server's job is not deleted when it is closed). */
    Export start(FilePartition p) {
        return FhirBulkScan.builder(options).resume(checkpoint).resumeFiles(files).onlyFiles(p.index())
                .option("delete_on_cancel", false).start();
    }

    /**
     * Ties a task's export to its task: when Spark kills the task because its job or stage was
     * cancelled, the export stops at once and the server's job is deleted (once per executor);
     * a kill because another attempt of the task succeeded (speculation) deletes nothing.
     */
    void watch(Export export, FilePartition p) {
        TaskContext tc = TaskContext.get();
        if (tc == null) {
            return;
        }
        tc.addTaskInterruptListener((ctx, reason) -> {
            export.cancel();
            String why = reason == null ? "" : reason;
            if (why.contains("another attempt succeeded")) {
                return;
            }
            deleteJob(p, why);
        });
    }

    /** Checkpoints (their digests) whose job this JVM deleted already. */
    private static final Set<String> DELETED = ConcurrentHashMap.newKeySet();

    /**
     * DELETEs the export's job through the engine (the same auth, retries and origin rules): an
     * export that takes the checkpoint over with {@code manifest_only} and
     * {@code delete_on_complete} fetches no file and deletes the job when it completes. On a
     * thread of its own: the task's thread is being interrupted.
     */
    void deleteJob(FilePartition p, String reason) {
        if (!DELETED.add(digest(checkpoint))) {
            return;
        }
        Thread t = new Thread(() -> {
            try (Export del = FhirBulkScan.builder(options).resume(checkpoint).resumeFiles(files)
                    .onlyFiles(p.index()).option("manifest_only", true).option("delete_on_complete", true)
                    .option("delete_on_cancel", false).start()) {
                for (org.fhirbulk.BulkRecord r : del) {
                    LOG.log(System.Logger.Level.DEBUG, "fhirbulk: unexpected record {0}", r);
                }
                LOG.log(System.Logger.Level.INFO, "fhirbulk: the task was killed ({0}): the export''s job is deleted",
                        reason);
            } catch (RuntimeException e) {
                LOG.log(System.Logger.Level.WARNING, "fhirbulk: the export''s job could not be deleted: {0}",
                        e.getMessage());
            }
        }, "fhirbulk-delete-job");
        t.setDaemon(true);
        t.start();
    }

    private static String digest(String s) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(s.getBytes(StandardCharsets.UTF_8)));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
