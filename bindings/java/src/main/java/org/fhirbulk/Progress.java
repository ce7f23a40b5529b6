package org.fhirbulk;

/**
 * A snapshot of an export ({@link Export#progress()}), taken without blocking.
 *
 * @param state          where the export is
 * @param serverProgress the server's last {@code X-Progress} text ("" when none)
 * @param filesTotal     files in the manifest so far
 * @param filesDone      files downloaded completely
 * @param bytes          NDJSON bytes received (after decompression)
 * @param records        records handed to the caller
 * @param polls          status requests made
 * @param retries        requests repeated after retryable failures (429, 5xx, broken transfers)
 * @param invalidLines   invalid NDJSON lines delivered as error records
 *                       ({@code on_invalid_line: "skip"})
 * @param errorCode      the error code once {@code state} is {@link State#FAILED}, else 0
 * @param httpStatus     the HTTP status of the failed response, else 0
 * @param warnings       warnings so far ({@link Export#warnings()})
 * @param waitUntilMs    while the export waits more than 2 s (a {@code Retry-After}, a backoff,
 *                       the time between status polls): when the wait ends, in milliseconds
 *                       since the Unix epoch; else 0
 * @param waitReason     what that wait is for (what the server answered), else ""
 * @param attachmentsFetched documents fetched for attachments
 *                       ({@link ExportBuilder#attachments(AttachmentMode)}), inline or saved
 * @param attachmentErrors attachments that could not be fetched, each delivered as an error
 *                       record ({@link BulkRecord#attachmentError()})
 */
public record Progress(State state, String serverProgress, int filesTotal, int filesDone, long bytes,
        long records, int polls, int retries, long invalidLines, int errorCode, int httpStatus,
        int warnings, long waitUntilMs, String waitReason, long attachmentsFetched, long attachmentErrors) {

    /** The export's state ({@code FHIRBULK_STATE_*}). */
    public enum State {
        /** Sending the kick-off request. */
        KICKING_OFF,
        /** The server is preparing the files (status polling). */
        WAITING,
        /** Files are downloading. */
        DOWNLOADING,
        /** Every file downloaded (records may still wait to be pulled). */
        DONE,
        /** Failed; the pull that sees it throws. */
        FAILED,
        /** Cancelled. */
        CANCELLED;

        private static final State[] VALUES = values();

        static State of(int s) {
            return s >= 0 && s < VALUES.length ? VALUES[s] : FAILED;
        }

        /** Done, failed or cancelled: nothing more will be downloaded. */
        public boolean isTerminal() {
            return this == DONE || this == FAILED || this == CANCELLED;
        }
    }
}
