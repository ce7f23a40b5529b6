package org.fhirbulk;

import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
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
 *         .option("concurrency", 4)
 *         .start()) {
 *     for (BulkRecord r : export) { ... }
 * }
 * }</pre>
 *
 * Each method sets one key of the JSON config the library takes (README "Config keys");
 * {@link #option(String, Object)} sets any key, so every library option is reachable. The library
 * validates the whole config in {@link #start()} ({@link ConfigException} names the key). A
 * builder is not thread-safe; it can start several exports.
 */
public final class ExportBuilder {
    private final Map<String, Object> config = new LinkedHashMap<>();

    ExportBuilder(String baseUrl) {
        config.put("base_url", Objects.requireNonNull(baseUrl, "baseUrl"));
    }

    /** A system-level export, {@code [base]/$export} (the default). */
    public ExportBuilder system() {
        config.put("level", "system");
        config.remove("group_id");
        return this;
    }

    /** A patient-level export of all patients, {@code [base]/Patient/$export}. */
    public ExportBuilder allPatients() {
        config.put("level", "patient");
        config.remove("group_id");
        return this;
    }

    /** A group-level export, {@code [base]/Group/[id]/$export}. */
    public ExportBuilder group(String groupId) {
        config.put("level", "group");
        config.put("group_id", Objects.requireNonNull(groupId, "groupId"));
        return this;
    }

    /** {@code _type}: the resource types to export (all the server offers when not set). */
    public ExportBuilder types(String... types) {
        return types(Arrays.asList(types));
    }

    /** {@code _type}: the resource types to export. */
    public ExportBuilder types(Collection<String> types) {
        return list("types", types);
    }

    /** {@code _since}: only resources changed after this instant (incremental exports). */
    public ExportBuilder since(Instant since) {
        config.put("since", Objects.requireNonNull(since, "since").toString());
        return this;
    }

    /** {@code _until} (Bulk Data v3). */
    public ExportBuilder until(Instant until) {
        config.put("until", Objects.requireNonNull(until, "until").toString());
        return this;
    }

    /** {@code _typeFilter} queries such as {@code "Observation?status=final"}. */
    public ExportBuilder typeFilters(String... filters) {
        return list("type_filters", Arrays.asList(filters));
    }

    /** {@code _elements}. */
    public ExportBuilder elements(String... elements) {
        return list("elements", Arrays.asList(elements));
    }

    /** {@code patient} references ({@code "Patient/123"} or {@code "123"}); forces POST. */
    public ExportBuilder patients(String... references) {
        return list("patients", Arrays.asList(references));
    }

    /** How to authorize (default {@link Auth#none()}). */
    public ExportBuilder auth(Auth auth) {
        config.put("auth", Objects.requireNonNull(auth, "auth").copy());
        return this;
    }

    /**
     * A kick-off parameter the library does not know (a vendor's), sent as given: in the query
     * of a GET kick-off, as a {@code valueString} parameter of a POST one. Calling it again
     * with the same name adds a value (the parameter is repeated).
     */
    public ExportBuilder param(String name, String value) {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(value, "value");
        Map<String, Object> params = objectKey("params");
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
    private Map<String, Object> objectKey(String key) {
        Object o = config.get(key);
        Map<String, Object> m = o instanceof Map ? new LinkedHashMap<>((Map<String, Object>) o) : new LinkedHashMap<>();
        config.put(key, m);
        return m;
    }

    /** An extra header for the FHIR server (never sent to other hosts), e.g. Epic-Client-ID. */
    public ExportBuilder header(String name, String value) {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(value, "value");
        objectKey("headers").put(name, value);
        return this;
    }

    /**
     * Continue an export from a checkpoint ({@link Export#checkpoint()}) without a new kick-off
     * and without receiving a record twice.
     */
    public ExportBuilder resume(String checkpointJson) {
        config.put("resume", Objects.requireNonNull(checkpointJson, "checkpointJson"));
        return this;
    }

    /**
     * The file list of the export {@link #resume} continues ({@link Export#files()}), so that
     * the manifest is not fetched again.
     */
    public ExportBuilder resumeFiles(String filesJson) {
        config.put("resume_files", Objects.requireNonNull(filesJson, "filesJson"));
        return this;
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
        config.put("only_files", list);
        return this;
    }

    /**
     * Take the manifest and download nothing: the export ends (no records) once the whole
     * manifest arrived; then {@link Export#checkpoint()} and {@link Export#files()} are what
     * {@link #onlyFiles} readers resume (a distributed reader's driver, e.g. the Spark
     * connector's).
     */
    public ExportBuilder manifestOnly() {
        config.put("manifest_only", true);
        return this;
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
            config.remove(key);
        } else {
            config.put(key, value);
        }
        return this;
    }

    private ExportBuilder list(String key, Collection<String> values) {
        List<String> copy = new ArrayList<>(values.size());
        for (String v : values) {
            copy.add(Objects.requireNonNull(v, key + " entry"));
        }
        config.put(key, copy);
        return this;
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
     * @throws ConfigException when the config is invalid (the message names the key)
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
            // Same thread: export_last_error_json(NULL) is this thread's last error.
            String detail = LibFhirBulk.text(LibFhirBulk::export_last_error_json, 0L);
            FhirBulkException e = FhirBulkException.fromDetail(rc, detail);
            Export.LOG.log(System.Logger.Level.DEBUG, "fhirbulk: export not started ({0}): {1}",
                    description, e.getMessage());
            throw e;
        }
        return new Export(out[0], description);
    }

    /** Never shows secrets. */
    @Override
    public String toString() {
        return "ExportBuilder[" + describe() + "]";
    }
}
