package org.fhirbulk;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The library's config errors in the terms of the Java code that built the config: the
 * {@link ExportBuilder} method that set the wrong value instead of the JSON key, Java type names
 * instead of Rust's ({@code usize}, {@code a sequence}), the nearest known key for one given to
 * {@link ExportBuilder#option} that does not exist, and no line/column positions in the JSON the
 * binding wrote. The library's wording is kept otherwise; a message it does not recognise only
 * loses its position.
 *
 * <p>{@code setBy} maps a config key to the call that set it, as {@link ExportBuilder} records
 * them: {@code "ExportBuilder.concurrency(int)"}, {@code "ExportBuilder.option(\"lenient\", ...)"}.
 */
final class JavaTerms {
    private JavaTerms() {}

    static final String PREFIX = "invalid config: ";

    /** The base URL is not set by a builder method. */
    static final String BASE_URL = "FhirBulk.export(String)";

    /** The call that sets a key through the generic setter. */
    static String option(String key) {
        return "ExportBuilder.option(" + quote(key) + ", ...)";
    }

    /**
     * The builder method of each key that has one (what a message suggests for a key the user did
     * not set). {@code level} has three ({@code system()}, {@code allPatients()},
     * {@code group(String)}) and is named by its values instead.
     */
    static final Map<String, String> TYPED = Map.ofEntries(
            Map.entry("base_url", BASE_URL),
            Map.entry("group_id", "ExportBuilder.group(String)"),
            Map.entry("types", "ExportBuilder.types(String...)"),
            Map.entry("since", "ExportBuilder.since(Instant)"),
            Map.entry("until", "ExportBuilder.until(Instant)"),
            Map.entry("type_filters", "ExportBuilder.typeFilters(String...)"),
            Map.entry("elements", "ExportBuilder.elements(String...)"),
            Map.entry("patients", "ExportBuilder.patients(String...)"),
            Map.entry("auth", "ExportBuilder.auth(Auth)"),
            Map.entry("params", "ExportBuilder.param(String, String)"),
            Map.entry("headers", "ExportBuilder.header(String, String)"),
            Map.entry("resume", "ExportBuilder.resume(String)"),
            Map.entry("resume_files", "ExportBuilder.resumeFiles(String)"),
            Map.entry("only_files", "ExportBuilder.onlyFiles(int...)"),
            Map.entry("manifest_only", "ExportBuilder.manifestOnly()"),
            Map.entry("concurrency", "ExportBuilder.concurrency(int)"),
            Map.entry("attachments", "ExportBuilder.attachments(AttachmentMode)"),
            Map.entry("attachment_types", "ExportBuilder.attachmentTypes(String...)"),
            Map.entry("attachment_content_types", "ExportBuilder.attachmentContentTypes(String...)"),
            Map.entry("attachment_max_bytes", "ExportBuilder.attachmentMaxBytes(long)"),
            Map.entry("attachment_dir", "ExportBuilder.attachmentDir(String)"));

    /** The {@link Auth.ClientCredentials} method of each field of {@code auth}. */
    static final Map<String, String> AUTH_FIELDS = Map.of(
            "client_id", "Auth.clientCredentials(String)",
            "private_key", "Auth.ClientCredentials.privateKey(Secret)",
            "client_secret", "Auth.ClientCredentials.clientSecret(Secret)",
            "kid", "Auth.ClientCredentials.kid(String)",
            "jku", "Auth.ClientCredentials.jku(String)",
            "alg", "Auth.ClientCredentials.alg(String)",
            "scope", "Auth.ClientCredentials.scope(String)",
            "token_url", "Auth.ClientCredentials.tokenUrl(String)",
            "token", "Auth.bearer(Secret)");

    private static final Pattern POSITION = Pattern.compile(" at line \\d+ column \\d+$");
    /** serde's own errors, after the path (serde_path_to_error) of the value they are about. */
    private static final Pattern SERDE = Pattern.compile("^(?:(\\S+?): )?"
            + "(?:unknown field `([^`]*)`, (?:expected (.*)|there are no fields)"
            + "|invalid type: (.*), expected (.*)"
            + "|invalid value: (.*), expected (.*)"
            + "|unknown variant `([^`]*)`, expected (.*)"
            + "|data did not match any variant of untagged enum (\\w+))$");
    private static final Pattern BACKTICKED = Pattern.compile("`([^`]*)`");
    /** Another error of serde's about the config (no message of its own after the path). */
    private static final Pattern OTHER_SERDE = Pattern.compile("^(?:\\S+: )?[^:]*$");
    /** A config key (or a field path such as {@code auth.alg}, {@code types[0]}) at the start. */
    private static final Pattern SUBJECT = Pattern.compile("^([a-z][a-z0-9_]*)((?:\\.[A-Za-z0-9_-]+|\\[\\d+\\])*)");
    /** A Rust {@code {:?}} string. */
    private static final String QUOTED = "\"(?:[^\"\\\\]|\\\\.)*\"";
    private static final Pattern LEADING_QUOTED = Pattern.compile("^:? (" + QUOTED + ")(.*)$");
    /** Quoted strings (left alone) or words (keys to name in Java terms). */
    private static final Pattern TOKEN = Pattern.compile(QUOTED + "|\\b[a-z][a-z0-9_]*\\b");

    /** The library's message for a config error, in Java terms. */
    static String message(String message, Map<String, String> setBy) {
        if (!message.startsWith(PREFIX)) {
            return message;
        }
        String body = message.substring(PREFIX.length());
        Matcher at = POSITION.matcher(body);
        if (at.find()) {
            // A position in the JSON the binding wrote means nothing to the caller; one in a
            // checkpoint they passed ("resume is not a checkpoint: ... at line 1 column 9") does.
            String bare = body.substring(0, at.start());
            String out = serde(bare, setBy);
            if (out != null) {
                return PREFIX + out;
            }
            if (OTHER_SERDE.matcher(bare).matches()) {
                body = bare;
            }
        }
        String out = serde(body, setBy);
        return PREFIX + (out != null ? out : validation(body, setBy));
    }

    // ---- deserialization: unknown keys, wrong types ------------------------------------------

    private static String serde(String body, Map<String, String> setBy) {
        Matcher m = SERDE.matcher(body);
        if (!m.matches()) {
            return null;
        }
        String path = m.group(1);
        String key = path == null ? null : topKey(path);
        if (m.group(2) != null) {
            String unknown = m.group(2);
            List<String> known = new ArrayList<>();
            if (m.group(3) != null) {
                Matcher k = BACKTICKED.matcher(m.group(3));
                while (k.find()) {
                    known.add(k.group(1));
                }
            }
            String near = nearest(unknown, known);
            String where;
            String what;
            if (key == null || key.equals(unknown)) {
                // A top-level key: only ExportBuilder.option can set one the library lacks.
                where = setBy.getOrDefault(unknown, option(unknown));
                what = "no such config key";
            } else {
                where = setter(key, setBy);
                what = path + " has no key " + quote(unknown);
            }
            String hint;
            if (near == null) {
                hint = path == null || key.equals(unknown) ? " (README \"Config keys\" lists them)" : "";
            } else if ((path == null || key.equals(unknown)) && TYPED.containsKey(near) && !near.equals("base_url")) {
                hint = "; did you mean " + quote(near) + " (or " + TYPED.get(near) + ")?";
            } else {
                hint = "; did you mean " + quote(near) + "?";
            }
            return where + ": " + what + hint;
        }
        if (key == null) {
            return null;
        }
        String where = setter(key, setBy);
        String sub = path.equals(key) ? "" : ": " + path;
        String got;
        String want;
        if (m.group(4) != null) {
            got = javaValue(m.group(4));
            want = javaType(m.group(5), key, false);
        } else if (m.group(6) != null) {
            got = javaValue(m.group(6));
            want = javaType(m.group(7), key, m.group(6).startsWith("integer `-"));
        } else if (m.group(8) != null) {
            got = quote(m.group(8));
            want = orList(m.group(9));
        } else if (m.group(10).equals("ParamValues")) {
            return where + sub + " must be a String or a List<String>";
        } else {
            return null;
        }
        return where + sub + " must be " + want + ", not " + got;
    }

    /** The nearest of {@code known} to {@code given} (case, underscores and dashes aside), or null. */
    static String nearest(String given, List<String> known) {
        String g = squash(given);
        String best = null;
        int bestScore = Integer.MAX_VALUE;
        for (String k : known) {
            int score = distance(g, squash(k));
            if (score < bestScore) {
                best = k;
                bestScore = score;
            }
        }
        return best != null && bestScore <= Math.max(1, g.length() / 4) ? best : null;
    }

    private static String squash(String s) {
        return s.toLowerCase(Locale.ROOT).replace("_", "").replace("-", "");
    }

    /** Levenshtein distance. */
    private static int distance(String a, String b) {
        int[] prev = new int[b.length() + 1];
        int[] cur = new int[b.length() + 1];
        for (int j = 0; j <= b.length(); j++) {
            prev[j] = j;
        }
        for (int i = 1; i <= a.length(); i++) {
            cur[0] = i;
            for (int j = 1; j <= b.length(); j++) {
                int sub = prev[j - 1] + (a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1);
                cur[j] = Math.min(sub, Math.min(prev[j] + 1, cur[j - 1] + 1));
            }
            int[] t = prev;
            prev = cur;
            cur = t;
        }
        return prev[b.length()];
    }

    /** serde's expected type ({@code usize}, {@code a sequence}, ...) as a Java type. */
    private static String javaType(String rust, String key, boolean negative) {
        String t = switch (rust) {
            case "usize", "u32", "u16", "u8", "i32" -> "an int";
            case "u64", "i64" -> "a long";
            case "a boolean" -> "a boolean";
            case "a string" -> "a String";
            case "a sequence" -> key.equals("only_files") ? "an int[] or a List<Integer>" : "a List<String> or a String[]";
            case "a map" -> key.equals("params") ? "a Map<String, List<String>>"
                    : key.equals("headers") ? "a Map<String, String>" : "a Map";
            default -> rust.startsWith("a secret") ? "a Secret" : rust;
        };
        return negative && (t.equals("an int") || t.equals("a long")) ? t + " of 0 or more" : t;
    }

    /** serde's unexpected value ({@code string "x"}, {@code integer `5`}) in Java terms. */
    private static String javaValue(String rust) {
        Matcher m = Pattern.compile("^(string|integer|floating point|boolean) (.*)$").matcher(rust);
        if (!m.matches()) {
            return switch (rust) {
                case "sequence" -> "a List";
                case "map" -> "a Map";
                case "null", "unit value" -> "null";
                default -> rust;
            };
        }
        String v = m.group(2);
        if (v.length() >= 2 && v.startsWith("`") && v.endsWith("`")) {
            v = v.substring(1, v.length() - 1);
        }
        return switch (m.group(1)) {
            case "string" -> "the String " + v;
            case "integer" -> (fitsInt(v) ? "the int " : "the long ") + v;
            case "floating point" -> "the double " + v;
            default -> "the boolean " + v;
        };
    }

    private static boolean fitsInt(String v) {
        try {
            Integer.parseInt(v);
            return true;
        } catch (NumberFormatException e) {
            return false;
        }
    }

    /** "one of `a`, `b`, `c`" or "`a` or `b`" as {@code "a", "b" or "c"}. */
    private static String orList(String expected) {
        List<String> names = new ArrayList<>();
        Matcher k = BACKTICKED.matcher(expected);
        while (k.find()) {
            names.add(quote(k.group(1)));
        }
        if (names.isEmpty()) {
            return expected;
        }
        if (names.size() == 1) {
            return names.get(0);
        }
        return String.join(", ", names.subList(0, names.size() - 1)) + " or " + names.get(names.size() - 1);
    }

    // ---- validation: "<key> must be ...", "<key> "value" is not ..." --------------------------

    private static String validation(String body, Map<String, String> setBy) {
        String authCall = setBy.get("auth");
        boolean authObject = TYPED.get("auth").equals(authCall);
        if (authObject && body.startsWith("auth type \"client_credentials\" needs exactly one of")) {
            return body.replace("auth type \"client_credentials\"", "Auth.clientCredentials(String)")
                    .replace("private_key (", "privateKey(Secret) (")
                    .replace("client_secret (", "clientSecret(Secret) (");
        }
        // The JSON writer escapes a lone surrogate as it is; the library cannot decode it.
        body = body.replaceFirst(": (?:unexpected end of hex escape|lone leading surrogate in hex escape"
                + "|invalid unicode code point)$", " has a lone surrogate (a String that is not valid Unicode)");
        String subject = "";
        String rest = body;
        Matcher s = SUBJECT.matcher(body);
        if (s.find()) {
            String key = s.group(1);
            String path = s.group(2);
            String call = key.equals("base_url") ? setBy.getOrDefault(key, BASE_URL) : setBy.get(key);
            if (call != null) {
                rest = body.substring(s.end());
                if (authObject && key.equals("auth") && path.startsWith(".")
                        && AUTH_FIELDS.containsKey(path.substring(1))) {
                    // auth.alg set by Auth.ClientCredentials.alg(String)
                    call = AUTH_FIELDS.get(path.substring(1));
                    path = "";
                    rest = rest.equals(" is empty") ? " was given an empty value" : rest;
                }
                if (!path.isEmpty()) {
                    subject = call + ": " + key + path;
                } else {
                    Matcher q = LEADING_QUOTED.matcher(rest);
                    String folded = q.matches() ? fold(call, q.group(1)) : null;
                    if (folded != null) {
                        // option("since", "yesterday") is not a FHIR instant ...
                        subject = folded;
                        rest = q.group(2);
                    } else {
                        subject = call;
                    }
                }
            }
        }
        return subject + mentions(rest, setBy);
    }

    /** {@code call} with {@code quoted} as its value argument, or null when it has none. */
    private static String fold(String call, String quoted) {
        if (call.endsWith("(String)")) {
            return call.substring(0, call.length() - "String)".length()) + quoted + ")";
        }
        if (call.endsWith(", ...)")) {
            return call.substring(0, call.length() - "...)".length()) + quoted + ")";
        }
        return null;
    }

    /** The other keys a message names, as the calls that set them (or would). */
    private static String mentions(String rest, Map<String, String> setBy) {
        StringBuilder out = new StringBuilder(rest.length() + 32);
        Matcher t = TOKEN.matcher(rest);
        int last = 0;
        while (t.find()) {
            String w = t.group();
            // level is named by the value it needs ("level \"group\""): the phrases below.
            String call = w.startsWith("\"") || w.equals("level") ? null : setBy.getOrDefault(w, TYPED.get(w));
            // Not a key in a dotted name ("headers.Authorization": a phrase below).
            boolean dotted = t.end() < rest.length() && rest.charAt(t.end()) == '.'
                    && t.end() + 1 < rest.length() && Character.isLetter(rest.charAt(t.end() + 1));
            if (call == null || dotted || inProse(rest, t.start(), t.end())) {
                continue;
            }
            out.append(rest, last, t.start());
            last = t.end();
            Matcher q = LEADING_QUOTED.matcher(rest.substring(t.end()));
            String folded = q.matches() && rest.charAt(t.end()) == ' ' ? fold(call, q.group(1)) : null;
            if (folded != null) {
                // method "get" cannot carry it: option("method", "get")
                out.append(folded);
                last = rest.length() - q.group(2).length();
            } else {
                out.append(call);
            }
            t.region(last, rest.length());
        }
        return phrases(out.append(rest, last, rest.length()).toString(), setBy);
    }

    /**
     * Phrases of the library's messages in which a word that is also a config key is plain
     * English ("attachment_types has "X", whose attachments fhirbulk does not know where to
     * find"): that word is left alone.
     */
    private static final List<String> PROSE = List.of("whose attachments ");

    /** Whether {@code rest[start, end)} lies inside one of the {@link #PROSE} phrases. */
    private static boolean inProse(String rest, int start, int end) {
        for (String p : PROSE) {
            for (int at = rest.indexOf(p); at >= 0; at = rest.indexOf(p, at + 1)) {
                if (at <= start && end <= at + p.length()) {
                    return true;
                }
            }
        }
        return false;
    }

    /** What the library says about keys with no single method of their own. */
    private static String phrases(String rest, Map<String, String> setBy) {
        return rest
                .replace("level \"patient\" or \"group\"", "ExportBuilder.allPatients() or ExportBuilder.group(String)")
                .replace("level \"group\"", "ExportBuilder.group(String)")
                .replace("put credentials in \"auth\", not in headers.Authorization",
                        "put credentials in ExportBuilder.auth(Auth), not in a header(\"Authorization\", ...)")
                .replace("set allow_insecure_http: true (CLI --allow-insecure-http)",
                        "set " + setBy.getOrDefault("allow_insecure_http", option("allow_insecure_http"))
                                .replace("...)", "true)"))
                .replace("from its own key ", "from ");
    }

    /** The config key a serde path starts with: {@code types} of {@code types[1]}. */
    private static String topKey(String path) {
        return path.split("[.\\[]", 2)[0];
    }

    private static String setter(String key, Map<String, String> setBy) {
        return setBy.getOrDefault(key, key.equals("base_url") ? BASE_URL : option(key));
    }

    static String quote(String s) {
        return '"' + s.replace("\\", "\\\\").replace("\"", "\\\"") + '"';
    }
}
