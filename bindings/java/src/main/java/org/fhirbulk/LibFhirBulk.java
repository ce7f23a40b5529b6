package org.fhirbulk;

import com.sun.jna.Native;
import com.sun.jna.NativeLibrary;
import com.sun.jna.Platform;
import com.sun.jna.Pointer;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;

/**
 * The C ABI of libfhirbulk ({@code include/fhirbulk.h}), bound with JNA direct mapping
 * ({@link Native#register(Class, NativeLibrary)}): static native methods, no proxy, no
 * reflection per call. Everything here is a 1:1 mirror of the header; the idiomatic API is in
 * {@link FhirBulk} and {@link Export}.
 *
 * <p>Handles are {@code long}s (the header's opaque pointer values are ids; this binding needs a
 * 64-bit platform), {@code size_t} is {@code long}. Text outputs use caller buffers with
 * snprintf semantics, see {@link #text}.
 *
 * <p>Loading: the system property {@code fhirbulk.library.path} (a file, or a directory holding
 * {@code libfhirbulk.so}) wins; otherwise the library bundled in the jar as
 * {@code linux-x86-64/libfhirbulk.so} is used (extracted to a temporary file by JNA when it
 * sits inside a jar). The library's ABI version must equal {@link #ABI_VERSION}.
 */
final class LibFhirBulk {
    /** {@code FHIRBULK_ABI_VERSION} of the header this binding was written against. */
    static final int ABI_VERSION = 3;

    /** System property overriding where the library is loaded from. */
    static final String LIBRARY_PATH_PROPERTY = "fhirbulk.library.path";

    // Status codes (FhirbulkStatus).
    static final int OK = 0;
    static final int RECORD = 1;
    static final int END = 2;
    static final int TIMEOUT = 3;
    static final int CANCELLED = 4;
    static final int ERR_INVALID_ARGUMENT = 100;
    static final int ERR_INVALID_HANDLE = 101;
    static final int ERR_BUSY = 102;
    static final int ERR_CONFIG = 103;
    static final int ERR_INTERNAL = 104;
    static final int ERR_NETWORK = 200;
    static final int ERR_TIMEOUT = 201;
    static final int ERR_PROTOCOL = 202;
    static final int ERR_AUTH = 203;
    static final int ERR_BAD_REQUEST = 300;
    static final int ERR_UNAUTHORIZED = 301;
    static final int ERR_FORBIDDEN = 302;
    static final int ERR_NOT_FOUND = 303;
    static final int ERR_NOT_ACCEPTABLE = 304;
    static final int ERR_UNSUPPORTED_MEDIA_TYPE = 305;
    static final int ERR_UNPROCESSABLE = 306;
    static final int ERR_THROTTLED = 307;
    static final int ERR_SERVER = 308;
    static final int ERR_HTTP = 309;

    // struct FhirbulkProgress (x86-64 / aarch64 LP64 layout, checked against the header).
    static final int PROGRESS_SIZE = 344;
    static final int PROGRESS_STATE = 0;
    static final int PROGRESS_ERROR = 4;
    static final int PROGRESS_HTTP_STATUS = 8;
    static final int PROGRESS_FILES_TOTAL = 12;
    static final int PROGRESS_FILES_DONE = 16;
    static final int PROGRESS_BYTES = 24;
    static final int PROGRESS_RECORDS = 32;
    static final int PROGRESS_POLLS = 40;
    static final int PROGRESS_RETRIES = 44;
    static final int PROGRESS_INVALID_LINES = 48;
    static final int PROGRESS_SERVER_PROGRESS = 56;
    static final int PROGRESS_SERVER_PROGRESS_LEN = 128;
    static final int PROGRESS_WAIT_UNTIL_MS = 184;
    static final int PROGRESS_WARNINGS = 192;
    static final int PROGRESS_WAIT_REASON = 196;
    static final int PROGRESS_WAIT_REASON_LEN = 128;
    static final int PROGRESS_ATTACHMENTS_FETCHED = 328;
    static final int PROGRESS_ATTACHMENT_ERRORS = 336;

    // struct FhirbulkRecord.
    static final int RECORD_SIZE = 64;
    static final int RECORD_DATA = 0;
    static final int RECORD_LEN = 8;
    static final int RECORD_TYPE = 16;
    static final int RECORD_TYPE_LEN = 24;
    static final int RECORD_KIND = 32;
    static final int RECORD_FILE_INDEX = 36;
    static final int RECORD_LINE = 40;
    /** {@code FHIRBULK_KIND_ATTACHMENT}: the document's bytes; else NULL. */
    static final int RECORD_CONTENT = 48;
    static final int RECORD_CONTENT_LEN = 56;

    // FHIRBULK_KIND_*.
    static final int KIND_OUTPUT = 0;
    static final int KIND_ERROR = 1;
    static final int KIND_DELETED = 2;
    static final int KIND_ATTACHMENT = 3;

    // struct FhirbulkBatch.
    static final int BATCH_SIZE = 32;
    static final int BATCH_RECORDS = 0;
    static final int BATCH_COUNT = 8;
    static final int BATCH_DATA = 16;
    static final int BATCH_DATA_LEN = 24;

    /** Where the library was loaded from (absolute path). */
    static final String LOCATION;

    static {
        if (Native.POINTER_SIZE != 8) {
            throw new UnsatisfiedLinkError("fhirbulk: the Java binding needs a 64-bit JVM");
        }
        LOCATION = register();
        checkAbi(fhirbulk_abi_version(), LOCATION);
    }

    private LibFhirBulk() {}

    private static String register() {
        File file = locate();
        NativeLibrary lib;
        try {
            lib = NativeLibrary.getInstance(file.getAbsolutePath());
        } catch (UnsatisfiedLinkError e) {
            UnsatisfiedLinkError err =
                    new UnsatisfiedLinkError("fhirbulk: cannot load " + file + ": " + e.getMessage());
            err.initCause(e);
            throw err;
        }
        Native.register(LibFhirBulk.class, lib);
        return file.getAbsolutePath();
    }

    private static File locate() {
        String override = System.getProperty(LIBRARY_PATH_PROPERTY);
        if (override != null && !override.isBlank()) {
            File f = new File(override.trim());
            if (f.isDirectory()) {
                f = new File(f, System.mapLibraryName("fhirbulk"));
            }
            if (!f.isFile()) {
                throw new UnsatisfiedLinkError(
                        "fhirbulk: -D" + LIBRARY_PATH_PROPERTY + "=" + override + ": no library at " + f);
            }
            return f;
        }
        String resource = Platform.RESOURCE_PREFIX + "/" + System.mapLibraryName("fhirbulk");
        try {
            // A file: URL (target/classes) is used in place; a jar entry is extracted to a
            // temporary file that JNA deletes when the JVM exits.
            return Native.extractFromResourcePath("fhirbulk", LibFhirBulk.class.getClassLoader());
        } catch (IOException e) {
            UnsatisfiedLinkError err = new UnsatisfiedLinkError(
                    "fhirbulk: no bundled native library for this platform (looked for the resource /"
                            + resource + " on the classpath: " + e.getMessage() + "). The release jar (make dist) bundles "
                            + "linux-x86-64 and linux-aarch64, a jar built by mvn package only the "
                            + "platform it was built on; build libfhirbulk for your platform "
                            + "(cargo build --release) and set -D" + LIBRARY_PATH_PROPERTY
                            + "=/path/to/libfhirbulk.so");
            err.initCause(e);
            throw err;
        }
    }

    /** Fails unless the library speaks the ABI this binding was written for. */
    static void checkAbi(int libraryAbi, String location) {
        if (libraryAbi != ABI_VERSION) {
            throw new UnsatisfiedLinkError("fhirbulk: " + location + " has ABI version " + libraryAbi
                    + ", this Java binding needs ABI version " + ABI_VERSION
                    + " (use the libfhirbulk of the same release as the jar, or set -D"
                    + LIBRARY_PATH_PROPERTY + " to it)");
        }
    }

    // ---- the C functions (include/fhirbulk.h) ---------------------------------------------

    /** {@code config} is NUL-terminated UTF-8; {@code outHandle[0]} receives the handle. */
    static native int export_start(byte[] config, long[] outHandle);

    /** {@code out} holds {@link #PROGRESS_SIZE} bytes. */
    static native int export_poll(long h, byte[] out);

    static native int export_next_record(long h, int timeoutMs, long outRecord);

    /** {@code outBatch} is the address of a {@link #BATCH_SIZE}-byte native buffer. */
    static native int export_next_batch(long h, long maxRecords, int timeoutMs, long outBatch);

    static native int export_cancel(long h);

    static native int export_free(long h);

    static native long export_last_error(long h, byte[] buf, long bufLen);

    static native long export_last_error_json(long h, byte[] buf, long bufLen);

    // The last error in parts (no JSON to parse).
    static final int ISSUE_SEVERITY = 0;
    static final int ISSUE_CODE = 1;
    static final int ISSUE_DIAGNOSTICS = 2;

    static native int export_error_code(long h);

    static native int export_error_http_status(long h);

    static native long export_error_url(long h, byte[] buf, long bufLen);

    static native long export_error_issue_count(long h);

    static native long export_error_issue(long h, long index, int field, byte[] buf, long bufLen);

    /** {@code outLen[0]} receives the event's length (or the length needed). */
    static native int export_next_event(long h, int timeoutMs, byte[] buf, long bufLen, long[] outLen);

    static native long export_events_dropped(long h);

    static native long export_manifest(long h, byte[] buf, long bufLen);

    static native long export_checkpoint(long h, byte[] buf, long bufLen);

    static native long export_checkpoint_unread(long h, long unread, byte[] buf, long bufLen);

    static native long export_files_json(long h, byte[] buf, long bufLen);

    static native long export_warnings_json(long h, byte[] buf, long bufLen);

    static native Pointer fhirbulk_version();

    static native int fhirbulk_abi_version();

    static native int fhirbulk_set_max_downloads(int n);

    static native Pointer fhirbulk_status_name(int status);

    // The Arrow C Data / Stream Interface functions. The struct pointers are the memory
    // addresses of Arrow Java's ArrowArray / ArrowSchema / ArrowArrayStream (their
    // memoryAddress()), so this class never refers to an Arrow class: FhirBulkArrow does.

    static native int fhirbulk_has_arrow();

    /** {@code resourceType} is NUL-terminated UTF-8; {@code outSchema} a struct ArrowSchema. */
    static native int fhirbulk_arrow_schema(byte[] resourceType, long outSchema);

    static native int export_next_arrow_batch(long h, long maxRows, int timeoutMs, long outArray,
            long outSchema, byte[] typeBuf, long typeBufLen);

    static native int export_arrow_stream(long h, byte[] resourceType, long maxRows, long outStream);

    // The native Parquet writer (FhirBulkParquet): no Arrow or Parquet class is involved.

    static native int fhirbulk_has_parquet();

    /** {@code dir} and {@code optionsJson} are NUL-terminated UTF-8 ({@code optionsJson} may be
     *  null); {@code summaryBuf} may be null (with length 0). */
    static native int export_write_parquet(long h, byte[] dir, byte[] optionsJson, int timeoutMs,
            byte[] summaryBuf, long summaryBufLen);

    // ---- helpers ----------------------------------------------------------------------------

    /** One of the text functions: (handle, buffer, length) -> full length. */
    @FunctionalInterface
    interface TextFn {
        long call(long h, byte[] buf, long len);
    }

    /**
     * Reads a text output with snprintf semantics: asks for the length, then copies (again if
     * it grew in between, as a manifest can). Empty when the library has nothing.
     */
    static String text(TextFn fn, long h) {
        long need = fn.call(h, null, 0);
        for (int attempt = 0; need > 0 && attempt < 4; attempt++) {
            if (need > Integer.MAX_VALUE - 16) {
                throw new IllegalStateException("fhirbulk: text output too large: " + need + " bytes");
            }
            byte[] buf = new byte[(int) need + 1];
            long got = fn.call(h, buf, buf.length);
            if (got <= need) {
                return new String(buf, 0, (int) got, StandardCharsets.UTF_8);
            }
            need = got;
        }
        return "";
    }

    /** The stable short name of a status ("not_found", ...). */
    static String statusName(int status) {
        Pointer p = fhirbulk_status_name(status);
        return p == null ? "unknown" : p.getString(0, "UTF-8");
    }

    static String version() {
        Pointer p = fhirbulk_version();
        return p == null ? "" : p.getString(0, "UTF-8");
    }
}
