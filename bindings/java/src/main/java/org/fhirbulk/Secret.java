package org.fhirbulk;

import java.nio.file.Path;
import java.util.Map;
import java.util.Objects;

/**
 * A secret (token, private key, client secret) for {@link Auth}: inline, or — better — read by
 * the library from a file or an environment variable, so it need not sit in the Java heap.
 * {@link #toString()} never shows the value.
 */
public final class Secret implements Json.JsonValue {
    private final String kind; // "value", "file", "env"
    private final String value;

    private Secret(String kind, String value) {
        this.kind = kind;
        this.value = Objects.requireNonNull(value, kind);
    }

    /** The secret itself. */
    public static Secret of(String value) {
        return new Secret("value", value);
    }

    /** A file holding the secret (PEM, JWK, JWKS or token text), read by the library. */
    public static Secret file(Path path) {
        return new Secret("file", path.toAbsolutePath().toString());
    }

    /** An environment variable holding the secret, read by the library. */
    public static Secret env(String variable) {
        return new Secret("env", variable);
    }

    @Override
    public Object toJsonValue() {
        return switch (kind) {
            case "file" -> Map.of("file", value);
            case "env" -> Map.of("env", value);
            default -> value;
        };
    }

    @Override
    public String toString() {
        return switch (kind) {
            case "file" -> "Secret[file " + value + "]";
            case "env" -> "Secret[env " + value + "]";
            default -> "Secret[***]";
        };
    }
}
