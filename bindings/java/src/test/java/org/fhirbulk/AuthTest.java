package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Authorization against a sandbox with a SMART token endpoint (client_secret_basic), and no
 * secret in logs, messages or toString().
 */
@Timeout(60)
class AuthTest {
    static final String CLIENT_ID = "java-client";
    static final String SECRET = "s3cret-Java-value-0123456789";
    static final String BOGUS_TOKEN = "bogus-token-Java-9876543210";

    static Sandbox sb;
    static final List<LogRecord> logs = new ArrayList<>();
    static final Handler capture = new Handler() {
        @Override
        public void publish(LogRecord r) {
            synchronized (logs) {
                logs.add(r);
            }
        }

        @Override
        public void flush() {}

        @Override
        public void close() {}
    };
    static Level oldLevel;

    @BeforeAll
    static void start() throws Exception {
        sb = Sandbox.start(40, 50, "--client-id", CLIENT_ID, "--client-secret", SECRET);
        Logger jul = Logger.getLogger("org.fhirbulk");
        oldLevel = jul.getLevel();
        jul.setLevel(Level.ALL);
        jul.addHandler(capture);
    }

    @AfterAll
    static void stop() {
        Logger jul = Logger.getLogger("org.fhirbulk");
        jul.removeHandler(capture);
        jul.setLevel(oldLevel);
        sb.close();
    }

    @Test
    void clientCredentialsSettersAreNeverLost() {
        // Set in place like ExportBuilder: a setter's result left unused does not drop it.
        Auth.ClientCredentials cc = Auth.clientCredentials(CLIENT_ID);
        cc.clientSecret(Secret.of(SECRET));
        cc.scope("system/*.rs");
        @SuppressWarnings("unchecked")
        Map<String, Object> json = (Map<String, Object>) cc.toJsonValue();
        assertEquals("system/*.rs", json.get("scope"));
        assertTrue(json.containsKey("client_secret"), json.keySet().toString());
        // The builder keeps what it was given: a later change does not reach it.
        ExportBuilder b = FhirBulk.export(sb.baseUrl()).auth(cc);
        cc.scope("system/Patient.read");
        assertTrue(b.configJson().contains("\"scope\":\"system/*.rs\""), "the builder's copy");
        assertFalse(b.configJson().contains("system/Patient.read"));
    }

    static void assertNoSecretLogged() {
        synchronized (logs) {
            assertFalse(logs.isEmpty(), "the binding logs at DEBUG");
            for (LogRecord r : logs) {
                String text = new java.util.logging.SimpleFormatter().formatMessage(r);
                assertFalse(text.contains(SECRET) || text.contains(BOGUS_TOKEN), text);
            }
        }
    }

    @Test
    void clientCredentialsWithASecret() throws Exception {
        Map<String, Long> counts = new TreeMap<>();
        Auth auth = Auth.clientCredentials(CLIENT_ID).clientSecret(Secret.of(SECRET));
        assertFalse(auth.toString().contains(SECRET), auth.toString());
        ExportBuilder b = FhirBulk.export(sb.url("polls=0")).group("g1").types("Patient", "Condition").auth(auth);
        assertFalse(b.toString().contains(SECRET), b.toString());
        try (Export export = b.start()) {
            for (BulkRecord r : export) {
                counts.merge(r.resourceType(), 1L, Long::sum);
            }
        }
        assertEquals(sb.truth("group", "g1", "Patient,Condition"), counts);
        assertNoSecretLogged();
    }

    @Test
    void secretFromAFile() throws Exception {
        Path f = Files.createTempFile("fhirbulk-secret", ".txt");
        try {
            Files.writeString(f, SECRET);
            long n;
            try (Export export = FhirBulk.export(sb.url("polls=0")).group("g2").types("Patient")
                    .auth(Auth.clientCredentials(CLIENT_ID).clientSecret(Secret.file(f))).start()) {
                n = export.stream().count();
            }
            assertEquals(sb.truth("group", "g2", "Patient").get("Patient"), n);
        } finally {
            Files.deleteIfExists(f);
        }
    }

    @Test
    void aWrongSecretIsAnAuthException() {
        String wrong = SECRET + "-wrong";
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1")
                .auth(Auth.clientCredentials(CLIENT_ID).clientSecret(Secret.of(wrong)))
                .option("retry_max_attempts", 1).start()) {
            AuthException e = assertThrows(AuthException.class, () -> export.iterator().hasNext());
            assertEquals(203, e.code());
            assertFalse(e instanceof UnauthorizedException);
            assertFalse(e.getMessage().contains(wrong), e.getMessage());
        }
        assertNoSecretLogged();
    }

    @Test
    void aBogusBearerTokenIsUnauthorized() {
        try (Export export = FhirBulk.export(sb.url("polls=0")).group("g1")
                .auth(Auth.bearer(BOGUS_TOKEN)).option("retry_max_attempts", 1).start()) {
            UnauthorizedException e = assertThrows(UnauthorizedException.class, () -> export.iterator().hasNext());
            assertInstanceOf(AuthException.class, e);
            assertEquals(301, e.code());
            assertEquals(401, e.httpStatus());
            assertEquals("login", e.issues().get(0).code());
            assertFalse(e.getMessage().contains(BOGUS_TOKEN), e.getMessage());
            assertNotEquals(0, e.issues().size());
        }
        assertNoSecretLogged();
    }

    @Test
    void configErrorsDoNotEchoSecrets() {
        ConfigException e = assertThrows(ConfigException.class, () -> FhirBulk.export(sb.baseUrl())
                .auth(Auth.clientCredentials(CLIENT_ID).clientSecret(Secret.of(SECRET)).alg("HS999")).start());
        assertFalse(e.getMessage().contains(SECRET), e.getMessage());
        assertTrue(Auth.bearer(Secret.env("EHR_TOKEN")).toString().contains("EHR_TOKEN"));
    }
}
