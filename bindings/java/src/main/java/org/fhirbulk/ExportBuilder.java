package org.fhirbulk;

import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * Describes an export; {@link #start()} starts it. Made by {@link FhirBulk#export(String)}.
 *
 * <pre>{@code
 * try (Export export = FhirBulk.export("https://ehr.example.org/r4")
 *         .group("g1")
 *         .types("Patient", "Observation")
 *         .since(Instant.parse("2024-01-01T00:00:00Z"))
 *         .auth(Auth.bearer(Secret.env("EHR_TOKEN")))
 *         .concurrency(4)
 *         .start()) {
 *     for (BulkRecord r : export) { ... }
 * }
 * }</pre>
 *
 * Each method sets one key of the JSON config the library takes (README "Config keys");
 * {@link #option(String, Object)} sets any key, so every library option is reachable. The library
 * validates the whole config in {@link #start()}: a {@link ConfigException} names the builder
 * method that set the wrong value (for {@code option}, the key as given, and the nearest known key
 * when it does not exist). A builder is not thread-safe; it can start several exports.
 */
public final class ExportBuilder {
    private final Map<String, Object> config = new LinkedHashMap<>();
    /** The call that set each key, for config errors in Java terms ({@link JavaTerms}). */
    private final Map<String, String> setBy = new HashMap<>();

    ExportBuilder(String baseUrl) {
        config.put("base_url", Objects.requireNonNull(baseUrl, "baseUrl"));
    }

    /** Sets {@code key}, and {@code call} as what set it (a config error names it). */
    private ExportBuilder set(String key, Object value, String call) {
        config.put(key, value);
        setBy.put(key, call);
        return this;
    }

    private void unset(String key) {
        config.remove(key);
        setBy.remove(key);
    }

    /** A system-level export, {@code [base]/$export} (the default). */
    public ExportBuilder system() {
        unset("group_id");
        return set("level", "system", "ExportBuilder.system()");
    }

    /** A patient-level export of all patients, {@code [base]/Patient/$export}. */
    public ExportBuilder allPatients() {
        unset("group_id");
        return set("level", "patient", "ExportBuilder.allPatients()");
    }

    /** A group-level export, {@code [base]/Group/[id]/$export}. */
    public ExportBuilder group(String groupId) {
        set("level", "group", "ExportBuilder.group(String)");
        return set("group_id", Objects.requireNonNull(groupId, "groupId"), "ExportBuilder.group(String)");
    }

    /** {@code _type}: the resource types to export (all the server offers when not set). */
    public ExportBuilder types(String... types) {
        return list("types", Arrays.asList(types), "ExportBuilder.types(String...)");
    }

    /** {@code _type}: the resource types to export. */
    public ExportBuilder types(Collection<String> types) {
        return list("types", types, "ExportBuilder.types(Collection<String>)");
    }

    /** {@code _since}: only resources changed after this instant (incremental exports). */
    public ExportBuilder since(Instant since) {
        return set("since", Objects.requireNonNull(since, "since").toString(), "ExportBuilder.since(Instant)");
    }

    /** {@code _until} (Bulk Data v3). */
    public ExportBuilder until(Instant until) {
        return set("until", Objects.requireNonNull(until, "until").toString(), "ExportBuilder.until(Instant)");
    }

    /** {@code _typeFilter} queries such as {@code "Observation?status=final"}. */
    public ExportBuilder typeFilters(String... filters) {
        return list("type_filters", Arrays.asList(filters), "ExportBuilder.typeFilters(String...)");
    }

    /** {@code _elements}. */
    public ExportBuilder elements(String... elements) {
        return list("elements", Arrays.asList(elements), "ExportBuilder.elements(String...)");
    }

    /** {@code patient} references ({@code "Patient/123"} or {@code "123"}); forces POST. */
    public ExportBuilder patients(String... references) {
        return list("patients", Arrays.asList(references), "ExportBuilder.patients(String...)");
    }

    /** How to authorize (default {@link Auth#none()}). */
    public ExportBuilder auth(Auth auth) {
        return set("auth", Objects.requireNonNull(auth, "auth").copy(), "ExportBuilder.auth(Auth)");
    }

    /**
     * A kick-off parameter the library does not know (a vendor's), sent as given: in the query
     * of a GET kick-off, as a {@code valueString} parameter of a POST one. Calling it again
     * with the same name adds a value (the parameter is repeated).
     */
    public ExportBuilder param(String name, String value) {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(value, "value");
        Map<String, Object> params = objectKey("params", "ExportBuilder.param(String, String)");
        Object old = params.get(name);
        List<String> values = new ArrayList<>();
        if (old instanceof List<?> l) {
            for (Object o : l) {
                values.add(String.valueOf(o));
            }
        } else if (old != null) {
            values.add(String.valueOf(old));
        }
        values.add(value);
        params.put(name, values);
        return this;
    }

    /**
     * The config's object under {@code key} (an object-valued key such as {@code headers}),
     * as a fresh copy put back under the key: a map given with {@link #option} is not changed.
     */
    @SuppressWarnings("unchecked")
    private Map<String, Object> objectKey(String key, String call) {
        Object o = config.get(key);
        Map<String, Object> m = o instanceof Map ? new LinkedHashMap<>((Map<String, Object>) o) : new LinkedHashMap<>();
        set(key, m, call);
        return m;
    }

    /** An extra header for the FHIR server (never sent to other hosts), e.g. Epic-Client-ID. */
    public ExportBuilder header(String name, String value) {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(value, "value");
        objectKey("headers", "ExportBuilder.header(String, String)").put(name, value);
        return this;
    }

    /**
     * Continue an export from a checkpoint ({@link Export#checkpoint()}) without a new kick-off
     * and without receiving a record twice.
     */
    public ExportBuilder resume(String checkpointJson) {
        return set("resume", Objects.requireNonNull(checkpointJson, "checkpointJson"), "ExportBuilder.resume(String)");
    }

    /**
     * The file list of the export {@link #resume} continues ({@link Export#files()}), so that
     * the manifest is not fetched again.
     */
    public ExportBuilder resumeFiles(String filesJson) {
        return set("resume_files", Objects.requireNonNull(filesJson, "filesJson"), "ExportBuilder.resumeFiles(String)");
    }

    /**
     * With {@link #resume}: read only these files of the checkpoint's export (their indexes in
     * {@link Export#files()}); the others count as complete. For readers that share out an
     * export's files between processes (a Spark task per file): one process reads an export
     * with {@link #manifestOnly()} to its end and takes {@link Export#checkpoint()} and
     * {@link Export#files()}; each reader resumes them with its own files (README "Reading given
     * files").
     */
    public ExportBuilder onlyFiles(int... fileIndexes) {
        java.util.List<Integer> list = new java.util.ArrayList<>();
        for (int i : Objects.requireNonNull(fileIndexes, "fileIndexes")) {
            if (i < 0) {
                throw new IllegalArgumentException("onlyFiles: " + i + " is not a file index");
            }
            list.add(i);
        }
        return set("only_files", list, "ExportBuilder.onlyFiles(int...)");
    }

    /**
     * Take the manifest and download nothing: the export ends (no records) once the whole
     * manifest arrived; then {@link Export#checkpoint()} and {@link Export#files()} are what
     * {@link #onlyFiles} readers resume (a distributed reader's driver, e.g. the Spark
     * connector's).
     */
    public ExportBuilder manifestOnly() {
        return set("manifest_only", true, "ExportBuilder.manifestOnly()");
    }

    /**
     * {@code concurrency}: files downloaded at once (the library's default 4; it takes 1 to 64).
     * The same as {@code option("concurrency", n)}.
     */
    public ExportBuilder concurrency(int files) {
        return set("concurrency", files, "ExportBuilder.concurrency(int)");
    }

    // ---- attachments (clinical documents) -----------------------------------------------------

    /**
     * {@code attachments}: what to do with the attachments of the records of
     * {@link #attachmentTypes} that link their document by {@code url} ({@link AttachmentMode#NONE},
     * the default; {@link AttachmentMode#INLINE}: the document in the record's
     * {@code attachment.data}; {@link AttachmentMode#SAVE}: the document as a
     * {@link Kind#ATTACHMENT} record before its record). Documents are fetched in the download
     * threads with the export's retry policy; the token goes only to the FHIR server (and
     * {@code token_origins}). One that cannot be fetched gives an {@link Kind#ERROR} record
     * ({@link BulkRecord#attachmentError()}) and its attachment is left as it was.
     */
    public ExportBuilder attachments(AttachmentMode mode) {
        return set("attachments", Objects.requireNonNull(mode, "mode").configValue(),
                "ExportBuilder.attachments(AttachmentMode)");
    }

    /**
     * {@code attachment_types}: the resource types whose attachments are fetched (default
     * {@code DocumentReference}, {@code DiagnosticReport}; the library also knows {@code Media},
     * {@code Communication}, {@code CommunicationRequest}, {@code Patient}, {@code Practitioner},
     * {@code RelatedPerson}, {@code Person}).
     */
    public ExportBuilder attachmentTypes(String... types) {
        return list("attachment_types", Arrays.asList(types), "ExportBuilder.attachmentTypes(String...)");
    }

    /**
     * {@code attachment_content_types}: fetch only attachments of these media types
     * ({@code "application/pdf"}, {@code "text/*"}); none given (the default): all.
     */
    public ExportBuilder attachmentContentTypes(String... contentTypes) {
        return list("attachment_content_types", Arrays.asList(contentTypes),
                "ExportBuilder.attachmentContentTypes(String...)");
    }

    /**
     * {@code attachment_max_bytes}: a larger document is not fetched (an error record says so;
     * the record keeps its URL), so memory stays bounded (default 16 MiB; 1 to 2 GiB).
     */
    public ExportBuilder attachmentMaxBytes(long bytes) {
        return set("attachment_max_bytes", bytes, "ExportBuilder.attachmentMaxBytes(long)");
    }

    /**
     * {@code attachment_dir}: with {@link AttachmentMode#SAVE}, the relative directory written
     * into the rewritten URLs ({@link AttachmentInfo#file()}; default {@code "attachments/"}):
     * relative, ending in {@code '/'}, without {@code ..}, or empty.
     */
    public ExportBuilder attachmentDir(String dir) {
        return set("attachment_dir", Objects.requireNonNull(dir, "dir"), "ExportBuilder.attachmentDir(String)");
    }

    /**
     * Sets any config key (README "Config keys"), e.g. {@code option("concurrency", 4)},
     * {@code option("on_invalid_line", "skip")}, {@code option("lenient", true)}. Values: String,
     * Number, Boolean, {@link Instant}, {@link java.util.List}/arrays, {@link Map}, {@link Secret},
     * {@link Auth}; {@code null} removes the key.
     */
    public ExportBuilder option(String key, Object value) {
        Objects.requireNonNull(key, "key");
        if (key.equals("base_url") && value == null) {
            throw new IllegalArgumentException("base_url is required");
        }
        if (value == null) {
            unset(key);
            return this;
        }
        return set(key, value, JavaTerms.option(key));
    }

    private ExportBuilder list(String key, Collection<String> values, String call) {
        List<String> copy = new ArrayList<>(values.size());
        for (String v : values) {
            copy.add(Objects.requireNonNull(v, key + " entry"));
        }
        return set(key, copy, call);
    }

    /** The config JSON {@link #start()} hands to the library (contains secrets given inline). */
    String configJson() {
        return Json.write(config);
    }

    /** What logs may say about this export: base URL without query or credentials, level. */
    String describe() {
        StringBuilder sb = new StringBuilder(FhirBulk.redactUrl(String.valueOf(config.get("base_url"))));
        Object level = config.getOrDefault("level", "system");
        sb.append(" level=").append(level);
        if (config.get("group_id") != null) {
            sb.append(" group=").append(config.get("group_id"));
        }
        if (config.get("types") != null) {
            sb.append(" types=").append(String.join(",", castList(config.get("types"))));
        }
        Object auth = config.get("auth");
        if (auth instanceof Auth a) {
            Object v = a.toJsonValue();
            if (v instanceof Map<?, ?> m) {
                sb.append(" auth=").append(m.get("type"));
            }
        }
        return sb.toString();
    }

    private static List<String> castList(Object o) {
        List<String> out = new ArrayList<>();
        if (o instanceof Collection<?> c) {
            for (Object x : c) {
                out.add(String.valueOf(x));
            }
        }
        return out;
    }

    /**
     * Starts the export: the library validates the config, then kicks off on its own threads.
     *
     * @throws ConfigException when the config is invalid: the message names the builder method
     *         that set the wrong value ({@code option("key", ...)} for the generic setter, with
     *         the nearest known key when the key does not exist), in Java types; its
     *         {@link Throwable#getCause() cause} has the library's own message
     * @throws FhirBulkException for other refusals; server errors show on the first pull
     */
    public Export start() {
        String json = configJson();
        byte[] bytes = (json + '\0').getBytes(StandardCharsets.UTF_8);
        String description = describe();
        long[] out = new long[1];
        int rc;
        try {
            rc = LibFhirBulk.export_start(bytes, out);
        } finally {
            Arrays.fill(bytes, (byte) 0); // the native copy of inline secrets
        }
        if (rc != LibFhirBulk.OK) {
            // Same thread: the NULL handle's last error is this thread's.
            FhirBulkException e = FhirBulkException.fromLastError(rc, 0L);
            if (e instanceof ConfigException c) {
                e = inJavaTerms(c);
            }
            Export.LOG.log(System.Logger.Level.DEBUG, "fhirbulk: export not started ({0}): {1}",
                    description, e.getMessage());
            throw e;
        }
        return new Export(out[0], description);
    }

    /**
     * {@code e} with its message in the terms of the builder calls that made the config (same
     * code, name and status); its cause is {@code e}, with the library's own wording.
     */
    ConfigException inJavaTerms(ConfigException e) {
        String message = JavaTerms.message(e.getMessage(), setBy);
        if (message.equals(e.getMessage())) {
            return e;
        }
        ConfigException j = new ConfigException(e.code(), e.name(), e.httpStatus(), e.url(), message, e.issues());
        j.initCause(e);
        return j;
    }

    /** Never shows secrets. */
    @Override
    public String toString() {
        return "ExportBuilder[" + describe() + "]";
    }
}
