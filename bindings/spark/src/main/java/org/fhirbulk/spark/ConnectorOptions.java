package org.fhirbulk.spark;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.regex.Pattern;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

/**
 * The Spark options of {@code spark.read.format("fhirbulk")}, turned into the engine's config
 * (README "Config keys"). Every engine key is an option, spelled as in the README
 * ({@code group_id}) or in camelCase ({@code groupId}): Spark hands options over lowercased,
 * so a key is matched with its case and underscores ignored. Values are strings: numbers and
 * booleans are parsed for the keys that take them, lists are comma-separated (or a JSON array).
 *
 * <p>Secrets never sit in an option (options show in query plans, the Spark UI and event
 * logs): a private key, client secret or bearer token is named by a file or an environment
 * variable, which the engine reads on the driver and on each executor ({@code privateKeyFile},
 * {@code clientSecretEnv}, ...). An option holding a secret itself is refused.
 */
final class ConnectorOptions implements Serializable {
    private static final long serialVersionUID = 1L;

    enum Kind { STRING, BOOL, INT, LIST }

    /** The engine's config keys an option can set, with the type of their value. */
    static final Map<String, Kind> ENGINE_KEYS;

    /** Keys the connector sets itself (the partitioning between driver and tasks). */
    static final Set<String> MANAGED = Set.of("resume", "resume_files", "only_files", "manifest_only",
            "delete_on_cancel");

    /** Keys that have no meaning for a Spark read, with why. */
    static final Map<String, String> UNSUPPORTED = Map.of(
            "delete_on_complete", "no single task knows when the whole export was read: the server's job "
                    + "is left for the server to expire (it is deleted when the Spark job is cancelled)",
            "event_queue_size", "the connector does not read the engine's events (Spark's own UI and "
                    + "metrics show the read); they are kept at the default and dropped, never waited for",
            "read_capability_statement", "it only feeds an event, which the connector does not read",
            "attachment_dir", "rows carry documents inline (attachments=inline); saved documents have no "
                    + "place in a table");

    /** The connector's own options (not engine keys). */
    static final Set<String> OWN = Set.of("type", "batch_rows");

    static {
        Map<String, Kind> k = new LinkedHashMap<>();
        for (String s : List.of("base_url", "level", "group_id", "output_format", "since", "until",
                "organize_output_by", "method", "ca_bundle", "client_cert", "on_invalid_line", "attachments")) {
            k.put(s, Kind.STRING);
        }
        for (String s : List.of("types", "elements", "type_filters", "include_associated_data", "patients",
                "token_origins", "attachment_types", "attachment_content_types")) {
            k.put(s, Kind.LIST);
        }
        for (String s : List.of("allow_partial_manifests", "lenient", "separate_export_status",
                "allow_insecure_http", "validate_json")) {
            k.put(s, Kind.BOOL);
        }
        for (String s : List.of("concurrency", "buffer_chunks", "chunk_bytes", "max_line_bytes",
                "connect_timeout_ms", "request_timeout_ms", "read_timeout_ms", "min_bytes_per_s",
                "stall_window_ms", "poll_min_ms", "poll_max_ms", "poll_backoff_max_ms", "retry_max_attempts",
                "retry_max_wait_ms", "retry_backoff_min_ms", "retry_backoff_max_ms", "attachment_max_bytes")) {
            k.put(s, Kind.INT);
        }
        // "headers", "params" and "auth" are objects: header.<Name> and param.<name> options,
        // and the auth options below.
        ENGINE_KEYS = Collections.unmodifiableMap(k);
    }

    /** Auth options (normalized name to the engine's auth key). */
    static final Map<String, String> AUTH_PLAIN = Map.of("clientid", "client_id", "kid", "kid", "alg", "alg",
            "jku", "jku", "scope", "scope", "tokenurl", "token_url");
    /** Secret options: normalized name to {engine auth key, "file" or "env"}. */
    static final Map<String, String[]> AUTH_SECRETS = Map.of(
            "privatekeyfile", new String[] {"private_key", "file"},
            "privatekeyenv", new String[] {"private_key", "env"},
            "clientsecretfile", new String[] {"client_secret", "file"},
            "clientsecretenv", new String[] {"client_secret", "env"},
            "tokenfile", new String[] {"token", "file"},
            "tokenenv", new String[] {"token", "env"});
    /** Options that would put a secret into the plan. */
    static final Map<String, String> SECRET_VALUES = Map.of("privatekey", "privateKey", "clientsecret",
            "clientSecret", "token", "token", "bearertoken", "token", "accesstoken", "token");

    private static final Pattern TYPE_FILTER_START = Pattern.compile(",\\s*(?=[A-Z][A-Za-z]*\\?)");

    /** The engine config (without the keys the connector manages); no secret values in it. */
    final Map<String, Object> config;
    /** {@code type}: the typed table of that resource type, or null for the untyped rows. */
    final String type;
    /** {@code batchRows}: rows per Arrow batch of the typed table. */
    final int batchRows;

    private ConnectorOptions(Map<String, Object> config, String type, int batchRows) {
        this.config = config;
        this.type = type;
        this.batchRows = batchRows;
    }

    static String normalize(String key) {
        return key.toLowerCase(Locale.ROOT).replace("_", "").replace("-", "");
    }

    private static final Map<String, String> BY_NORMALIZED = new TreeMap<>();

    static {
        for (String key : ENGINE_KEYS.keySet()) {
            BY_NORMALIZED.put(normalize(key), key);
        }
        for (String key : MANAGED) {
            BY_NORMALIZED.put(normalize(key), key);
        }
        for (String key : UNSUPPORTED.keySet()) {
            BY_NORMALIZED.put(normalize(key), key);
        }
        for (String key : OWN) {
            BY_NORMALIZED.put(normalize(key), key);
        }
    }

    /** Parses the options; {@link IllegalArgumentException} names the option that is wrong. */
    static ConnectorOptions parse(Map<String, String> options) {
        Map<String, Object> config = new LinkedHashMap<>();
        Map<String, Object> auth = new LinkedHashMap<>();
        Map<String, Object> headers = new LinkedHashMap<>();
        Map<String, Object> params = new LinkedHashMap<>();
        String authType = null;
        String type = null;
        int batchRows = 4096;
        Map<String, String> seen = new LinkedHashMap<>();
        // Spark lowercases the keys of its option map; the names as given matter for vendor
        // parameters (param.<name>) and for messages.
        Map<String, String> given = options instanceof org.apache.spark.sql.util.CaseInsensitiveStringMap ci
                ? ci.asCaseSensitiveMap() : options;
        for (Map.Entry<String, String> e : new TreeMap<>(given).entrySet()) {
            String option = e.getKey();
            String value = e.getValue();
            if (value == null) {
                continue;
            }
            String lower = option.toLowerCase(Locale.ROOT);
            if (lower.equals("path") || lower.equals("paths")) {
                throw new IllegalArgumentException("fhirbulk: load(" + value + "): this source reads an export from "
                        + "a FHIR server, not files; call load() with the option baseUrl");
            }
            if (lower.startsWith("param.")) {
                params.put(option.substring("param.".length()), list(option, "params", value));
                continue;
            }
            if (lower.startsWith("header.")) {
                String name = option.substring("header.".length());
                if (name.equalsIgnoreCase("authorization")) {
                    throw new IllegalArgumentException("fhirbulk: option " + option + ": an Authorization "
                            + "header would put the token into the query plan; give it as tokenFile or tokenEnv");
                }
                headers.put(name, value);
                continue;
            }
            String n = normalize(option);
            if (SECRET_VALUES.containsKey(n)) {
                String name = SECRET_VALUES.get(n);
                throw new IllegalArgumentException("fhirbulk: option " + option + " holds a secret, which would "
                        + "show in the query plan and the Spark UI; name a file or an environment variable "
                        + "instead (" + name + "File or " + name + "Env), read by the driver and the executors");
            }
            if (n.equals("auth") || n.equals("authtype")) {
                authType = switch (value.trim().toLowerCase(Locale.ROOT)) {
                    case "none" -> "none";
                    case "bearer" -> "bearer";
                    case "client_credentials", "backend_services", "smart" -> "client_credentials";
                    default -> throw new IllegalArgumentException("fhirbulk: option " + option + ": '" + value
                            + "' is not an authorization type (none, bearer, client_credentials)");
                };
                continue;
            }
            if (AUTH_PLAIN.containsKey(n)) {
                auth.put(AUTH_PLAIN.get(n), value);
                continue;
            }
            if (AUTH_SECRETS.containsKey(n)) {
                String[] to = AUTH_SECRETS.get(n);
                if (auth.containsKey(to[0])) {
                    throw new IllegalArgumentException("fhirbulk: option " + option + ": " + to[0]
                            + " is given twice (as a file and as an environment variable)");
                }
                auth.put(to[0], Map.of(to[1], value));
                continue;
            }
            String key = BY_NORMALIZED.get(n);
            if (key == null) {
                throw new IllegalArgumentException("fhirbulk: unknown option " + option + suggestion(n)
                        + " (the options are the engine's config keys, auth options and type; see the README)");
            }
            if (MANAGED.contains(key)) {
                throw new IllegalArgumentException("fhirbulk: option " + option + " is set by the connector "
                        + "(the driver takes the manifest, each task reads its own file)");
            }
            if (UNSUPPORTED.containsKey(key)) {
                throw new IllegalArgumentException("fhirbulk: option " + option + " is not supported by the "
                        + "Spark connector: " + UNSUPPORTED.get(key));
            }
            String earlier = seen.put(key, option);
            if (earlier != null) {
                throw new IllegalArgumentException("fhirbulk: options " + earlier + " and " + option + " both set "
                        + key);
            }
            switch (key) {
                case "type" -> type = value.trim();
                case "batch_rows" -> batchRows = (int) Math.min(Integer.MAX_VALUE, parseInt(option, value));
                default -> config.put(key, convert(option, key, value));
            }
        }
        if (!config.containsKey("base_url")) {
            throw new IllegalArgumentException("fhirbulk: option baseUrl is required (the FHIR server's base URL)");
        }
        if (batchRows < 1) {
            throw new IllegalArgumentException("fhirbulk: option batchRows must be at least 1");
        }
        if (type != null) {
            if (!type.matches("[A-Z][A-Za-z]*")) {
                throw new IllegalArgumentException("fhirbulk: option type: '" + type + "' is not a resource type");
            }
            @SuppressWarnings("unchecked")
            List<String> types = (List<String>) config.get("types");
            if (types == null || types.isEmpty()) {
                config.put("types", new ArrayList<>(List.of(type)));
            } else if (!types.contains(type)) {
                throw new IllegalArgumentException("fhirbulk: option type is " + type + ", which option types "
                        + types + " does not list");
            }
        }
        if (authType == null) {
            authType = auth.containsKey("token") ? "bearer" : auth.containsKey("client_id") ? "client_credentials"
                    : auth.isEmpty() ? "none" : null;
            if (authType == null) {
                throw new IllegalArgumentException("fhirbulk: auth options " + auth.keySet()
                        + " are given without clientId (or tokenFile / tokenEnv)");
            }
        }
        if (!authType.equals("none")) {
            Map<String, Object> a = new LinkedHashMap<>();
            a.put("type", authType);
            a.putAll(auth);
            config.put("auth", a);
        } else if (!auth.isEmpty()) {
            throw new IllegalArgumentException("fhirbulk: auth is none but auth options " + auth.keySet() + " are given");
        }
        if (!headers.isEmpty()) {
            config.put("headers", headers);
        }
        if (!params.isEmpty()) {
            config.put("params", params);
        }
        if ("save".equals(config.get("attachments"))) {
            throw new IllegalArgumentException("fhirbulk: option attachments: 'save' hands documents out as "
                    + "records of their own, which have no place in a table; use attachments=inline (the "
                    + "documents in the rows' attachment.data)");
        }
        return new ConnectorOptions(Collections.unmodifiableMap(config), type, batchRows);
    }

    private static String suggestion(String n) {
        String best = null;
        int bestDistance = 3;
        Set<String> names = new TreeSet<>(BY_NORMALIZED.keySet());
        names.addAll(AUTH_PLAIN.keySet());
        names.addAll(AUTH_SECRETS.keySet());
        for (String candidate : names) {
            int d = distance(n, candidate);
            if (d < bestDistance) {
                bestDistance = d;
                best = candidate;
            }
        }
        if (best == null) {
            return "";
        }
        String key = BY_NORMALIZED.getOrDefault(best, best);
        return " (did you mean " + key + "?)";
    }

    private static int distance(String a, String b) {
        int[] prev = new int[b.length() + 1];
        int[] cur = new int[b.length() + 1];
        for (int j = 0; j <= b.length(); j++) {
            prev[j] = j;
        }
        for (int i = 1; i <= a.length(); i++) {
            cur[0] = i;
            for (int j = 1; j <= b.length(); j++) {
                int cost = a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1;
                cur[j] = Math.min(Math.min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + cost);
            }
            int[] t = prev;
            prev = cur;
            cur = t;
        }
        return prev[b.length()];
    }

    private static Object convert(String option, String key, String value) {
        return switch (ENGINE_KEYS.get(key)) {
            case STRING -> value;
            case INT -> parseInt(option, value);
            case BOOL -> switch (value.trim().toLowerCase(Locale.ROOT)) {
                case "true" -> Boolean.TRUE;
                case "false" -> Boolean.FALSE;
                default -> throw new IllegalArgumentException("fhirbulk: option " + option
                        + ": expected true or false, got '" + value + "'");
            };
            case LIST -> list(option, key, value);
        };
    }

    private static long parseInt(String option, String value) {
        try {
            return Long.parseLong(value.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("fhirbulk: option " + option + ": expected a whole number, got '"
                    + value + "'");
        }
    }

    private static final ObjectMapper JSON = new ObjectMapper();

    /**
     * A list option: a JSON array of strings, or comma-separated. Type filters are split only
     * before a comma followed by {@code Type?}, since a filter's own values may hold commas.
     */
    private static List<String> list(String option, String key, String value) {
        String v = value.trim();
        List<String> out = new ArrayList<>();
        if (v.startsWith("[")) {
            try {
                JsonNode node = JSON.readTree(v);
                for (JsonNode x : node) {
                    if (!x.isTextual()) {
                        throw new IllegalArgumentException("fhirbulk: option " + option
                                + ": the JSON array holds a value that is not a string: " + x);
                    }
                    out.add(x.asText());
                }
                return out;
            } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
                throw new IllegalArgumentException("fhirbulk: option " + option + ": not a JSON array of strings ("
                        + e.getOriginalMessage() + ")");
            }
        }
        String[] parts = key.equals("type_filters") ? TYPE_FILTER_START.split(v) : v.split(",");
        Arrays.stream(parts).map(String::trim).filter(s -> !s.isEmpty()).forEach(out::add);
        return out;
    }
}
