package org.fhirbulk;

import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * A {@code fhirbulk-sandbox} process on an ephemeral port (README "The sandbox server").
 *
 * <p>The binary: system property or environment variable {@code FHIRBULK_SANDBOX_BIN}, else
 * {@code <repo>/target/debug/fhirbulk-sandbox}, else {@code <repo>/target/release/...}; the
 * repository root is the system property {@code fhirbulk.repo.root} (set by the pom), else
 * {@code ../..}.
 */
public final class Sandbox implements AutoCloseable {
    private final Process process;
    private final Path dir;
    private final int port;
    private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();

    private Sandbox(Process process, Path dir, int port) {
        this.process = process;
        this.dir = dir;
        this.port = port;
    }

    static Path repoRoot() {
        String root = System.getProperty("fhirbulk.repo.root");
        return Path.of(root != null ? root : "../..").toAbsolutePath().normalize();
    }

    static Path binary() {
        String bin = System.getProperty("FHIRBULK_SANDBOX_BIN");
        if (bin == null || bin.isBlank()) {
            bin = System.getenv("FHIRBULK_SANDBOX_BIN");
        }
        if (bin != null && !bin.isBlank()) {
            return Path.of(bin);
        }
        Path debug = repoRoot().resolve("target/debug/fhirbulk-sandbox");
        if (Files.isExecutable(debug)) {
            return debug;
        }
        Path release = repoRoot().resolve("target/release/fhirbulk-sandbox");
        if (Files.isExecutable(release)) {
            return release;
        }
        throw new IllegalStateException("fhirbulk-sandbox not found (" + debug + "); build it with "
                + "`cargo build --features sandbox --bin fhirbulk-sandbox` or set FHIRBULK_SANDBOX_BIN");
    }

    /** Starts a sandbox with these patients / records per file and any extra arguments. */
    public static Sandbox start(Path binary, int patients, int recordsPerFile, String... extra)
            throws IOException, InterruptedException {
        Path dir = Files.createTempDirectory("fhirbulk-sandbox");
        Path portFile = dir.resolve("port");
        List<String> cmd = new ArrayList<>(List.of(binary.toString(), "--port", "0", "--port-file",
                portFile.toString(), "--patients", Integer.toString(patients), "--records-per-file",
                Integer.toString(recordsPerFile)));
        cmd.addAll(List.of(extra));
        Path log = dir.resolve("sandbox.log");
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile()).start();
        long deadline = System.nanoTime() + Duration.ofSeconds(20).toNanos();
        while (System.nanoTime() < deadline) {
            if (Files.exists(portFile)) {
                String text = Files.readString(portFile).trim();
                if (!text.isEmpty()) {
                    return new Sandbox(p, dir, Integer.parseInt(text));
                }
            }
            if (!p.isAlive()) {
                break;
            }
            Thread.sleep(20);
        }
        p.destroyForcibly();
        throw new IOException("sandbox did not start: " + cmd + "\n" + Files.readString(log));
    }

    public static Sandbox start(int patients, int recordsPerFile, String... extra)
            throws IOException, InterruptedException {
        return start(binary(), patients, recordsPerFile, extra);
    }

    public int port() {
        return port;
    }

    public String root() {
        return "http://127.0.0.1:" + port;
    }

    /** {@code http://127.0.0.1:PORT/fhir} */
    public String baseUrl() {
        return root() + "/fhir";
    }

    /** {@code http://127.0.0.1:PORT/x/<scenario>/fhir} */
    public String url(String scenario) {
        return root() + "/x/" + scenario + "/fhir";
    }

    public String get(String pathAndQuery) throws IOException, InterruptedException {
        HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create(root() + pathAndQuery))
                .timeout(Duration.ofSeconds(30)).build(), HttpResponse.BodyHandlers.ofString());
        if (r.statusCode() != 200) {
            throw new IOException("GET " + pathAndQuery + ": HTTP " + r.statusCode() + ": " + r.body());
        }
        return r.body();
    }

    /** Exact counts per type from {@code /_sandbox/truth}. */
    public Map<String, Long> truth(String level, String group, String types)
            throws IOException, InterruptedException {
        StringBuilder q = new StringBuilder("/_sandbox/truth?level=").append(level);
        if (group != null) {
            q.append("&group=").append(URLEncoder.encode(group, StandardCharsets.UTF_8));
        }
        if (types != null) {
            q.append("&_type=").append(URLEncoder.encode(types, StandardCharsets.UTF_8));
        }
        Map<String, Long> out = new TreeMap<>();
        Json.parseObject(get(q.toString())).forEach((k, v) -> out.put(k, (Long) v));
        return out;
    }

    /**
     * The sorted {@code Type/id} of every resource an export of the query must deliver
     * ({@code /_sandbox/truth?ids=1}): the exact multiset, each id once.
     */
    @SuppressWarnings("unchecked")
    public List<String> truthIds(String level, String group, String types) throws IOException, InterruptedException {
        StringBuilder q = new StringBuilder("/_sandbox/truth?ids=1&level=").append(level);
        if (group != null) {
            q.append("&group=").append(URLEncoder.encode(group, StandardCharsets.UTF_8));
        }
        if (types != null) {
            q.append("&_type=").append(URLEncoder.encode(types, StandardCharsets.UTF_8));
        }
        List<String> out = new ArrayList<>();
        for (Object o : (List<Object>) Json.parse(get(q.toString()))) {
            out.add((String) o);
        }
        return out;
    }

    /** The request log ({@code /_sandbox/requests}), parsed. */
    @SuppressWarnings("unchecked")
    public List<Map<String, Object>> requests() throws IOException, InterruptedException {
        return (List<Map<String, Object>>) Json.parse(get("/_sandbox/requests"));
    }

    @Override
    public void close() {
        process.destroy();
        try {
            if (!process.waitFor(5, java.util.concurrent.TimeUnit.SECONDS)) {
                process.destroyForcibly();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        try {
            try (var files = Files.list(dir)) {
                for (Path f : (Iterable<Path>) files::iterator) {
                    Files.deleteIfExists(f);
                }
            }
            Files.deleteIfExists(dir);
        } catch (IOException ignored) {
            // temp dir; best effort
        }
    }
}
