package org.fhirbulk;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/**
 * How the export authorizes (the config's {@code auth} object; README "Authorization").
 *
 * <pre>{@code
 * Auth.none()
 * Auth.bearer("eyJ...")                                   // a token obtained elsewhere
 * Auth.bearer(Secret.env("EHR_TOKEN"))
 * Auth.clientCredentials("my-client-id")                  // SMART Backend Services
 *     .privateKey(Secret.file(Path.of("/etc/fhirbulk/private.pem")))
 *     .kid("my-key-1")
 * Auth.clientCredentials("my-client-id")                  // client_secret_basic
 *     .clientSecret(Secret.env("EHR_CLIENT_SECRET"))
 *     .scope("system/*.read")
 * }</pre>
 *
 * {@link #none()} and {@link #bearer} are immutable; {@link ClientCredentials} is set in place,
 * like {@link ExportBuilder}. {@link #toString()} never shows a secret. The library validates the
 * combination (a config error names the key).
 */
public abstract class Auth implements Json.JsonValue {
    private Auth() {}

    /** What {@link ExportBuilder#auth} keeps: this, or a copy of settings that can change. */
    Auth copy() {
        return this;
    }

    /** No {@code Authorization} header. */
    public static Auth none() {
        return Simple.NONE;
    }

    /** A static bearer token. */
    public static Auth bearer(String token) {
        return bearer(Secret.of(Objects.requireNonNull(token, "token")));
    }

    /** A static bearer token, inline or from a file or environment variable. */
    public static Auth bearer(Secret token) {
        return new Simple("bearer", Objects.requireNonNull(token, "token"));
    }

    /**
     * OAuth 2.0 client credentials for {@code clientId}: add {@link ClientCredentials#privateKey}
     * (SMART Backend Services, {@code private_key_jwt}) or {@link ClientCredentials#clientSecret}
     * ({@code client_secret_basic}).
     */
    public static ClientCredentials clientCredentials(String clientId) {
        return new ClientCredentials(Objects.requireNonNull(clientId, "clientId"), new LinkedHashMap<>());
    }

    private static final class Simple extends Auth {
        static final Simple NONE = new Simple("none", null);
        private final String type;
        private final Secret token;

        Simple(String type, Secret token) {
            this.type = type;
            this.token = token;
        }

        @Override
        public Object toJsonValue() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("type", type);
            if (token != null) {
                m.put("token", token);
            }
            return m;
        }

        @Override
        public String toString() {
            return token == null ? "Auth[" + type + "]" : "Auth[" + type + ", token " + token + "]";
        }
    }

    /**
     * Client credentials, set like {@link ExportBuilder}: every setter changes this object and
     * returns it, so {@code cc.kid("k1");} on its own line is not lost. {@link ExportBuilder#auth}
     * takes a copy: changing the credentials afterwards does not change that builder.
     */
    public static final class ClientCredentials extends Auth {
        private final String clientId;
        private final Map<String, Object> fields;

        private ClientCredentials(String clientId, Map<String, Object> fields) {
            this.clientId = clientId;
            this.fields = fields;
        }

        private ClientCredentials with(String key, Object value) {
            fields.put(key, Objects.requireNonNull(value, key));
            return this;
        }

        @Override
        Auth copy() {
            return new ClientCredentials(clientId, new LinkedHashMap<>(fields));
        }

        /** The private key (PEM, JWK or JWKS) that signs the client assertion (RS384 / ES384). */
        public ClientCredentials privateKey(Secret key) {
            return with("private_key", key);
        }

        /** The client secret, sent with HTTP Basic to the token endpoint. */
        public ClientCredentials clientSecret(Secret secret) {
            return with("client_secret", secret);
        }

        /** The key id registered with the server (default: the JWK's {@code kid}). */
        public ClientCredentials kid(String kid) {
            return with("kid", kid);
        }

        /** {@code RS384} or {@code ES384} (default: from the key). */
        public ClientCredentials alg(String alg) {
            return with("alg", alg);
        }

        /** The URL of the client's JWKS, put in the assertion header. */
        public ClientCredentials jku(String jku) {
            return with("jku", jku);
        }

        /** The scope to ask for (default {@code system/*.read}, or v2 when only v2 is advertised). */
        public ClientCredentials scope(String scope) {
            return with("scope", scope);
        }

        /** The token endpoint (default: discovered from the server). */
        public ClientCredentials tokenUrl(String tokenUrl) {
            return with("token_url", tokenUrl);
        }

        @Override
        public Object toJsonValue() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("type", "client_credentials");
            m.put("client_id", clientId);
            m.putAll(fields);
            return m;
        }

        @Override
        public String toString() {
            StringBuilder sb = new StringBuilder("Auth[client_credentials, client_id ").append(clientId);
            fields.forEach((k, v) -> sb.append(", ").append(k).append(' ').append(v));
            return sb.append(']').toString();
        }
    }
}
