package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.io.TempDir;

/**
 * Keeps {@code bench/java_bench.sh} from rotting: its entry point ({@link Bench#compare}) on a
 * tiny export against the test sandbox prints one JSON object of the agreed shape with matching
 * counts, and the script still parses and runs that entry point.
 */
@ExtendWith(SandboxExtension.class)
@Timeout(120)
class BenchTest {
    static final Set<String> RUN_KEYS = Set.of("records", "bytes", "seconds", "records_per_s", "cpu_seconds",
            "thread_cpu_seconds");

    record Result(int code, String out, String err) {}

    static Result compare(String... args) throws Exception {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int code;
        try (PrintStream o = new PrintStream(out, true, StandardCharsets.UTF_8);
                PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            code = Bench.compare(args, o, e);
        }
        return new Result(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    /** The export's output files in dir, as bench/run.py downloads them; returns the record count. */
    static long download(Sandbox sb, String url, Path dir) throws Exception {
        try (Export e = FhirBulk.export(url).start()) {
            long n = e.stream().count();
            Bench.download(e.manifest(), dir);
            return n;
        }
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> oneJsonObject(String out) {
        List<String> lines = out.lines().toList();
        assertEquals(1, lines.size(), "exactly one line on stdout: " + out);
        return (Map<String, Object>) assertInstanceOf(Map.class, Json.parse(lines.get(0)));
    }

    @Test
    @SuppressWarnings("unchecked")
    void entryPointPrintsOneJsonObjectWithMatchingCounts(Sandbox sb, @TempDir Path dir) throws Exception {
        String url = sb.url("polls=0");
        long truth = sb.truth("system", null, null).values().stream().mapToLong(Long::longValue).sum();
        assertEquals(truth, download(sb, url, dir));

        Result r = compare("--base", url, "--local", dir.toString(), "--runs", "2");
        assertEquals(0, r.code(), r.err());
        Map<String, Object> o = oneJsonObject(r.out());
        assertEquals(Set.of("binding", "local", "ratio"), o.keySet());
        Map<String, Object> binding = (Map<String, Object>) o.get("binding");
        Map<String, Object> local = (Map<String, Object>) o.get("local");
        assertTrue(binding.keySet().containsAll(RUN_KEYS) && binding.containsKey("first_record_seconds"),
                binding.toString());
        assertTrue(local.keySet().containsAll(RUN_KEYS), local.toString());
        assertEquals(truth, binding.get("records"));
        assertEquals(truth, local.get("records"));
        assertEquals(local.get("bytes"), binding.get("bytes"), "record bytes + newlines = the files' sizes");
        for (Map<String, Object> side : List.of(binding, local)) {
            double seconds = ((Number) side.get("seconds")).doubleValue();
            double rate = ((Number) side.get("records_per_s")).doubleValue();
            assertTrue(seconds > 0 && rate > 0, side.toString());
            assertEquals(truth / seconds, rate, rate * 1e-3 + 0.1, side.toString());
        }
        double ratio = ((Number) o.get("ratio")).doubleValue();
        double expected = ((Number) binding.get("records_per_s")).doubleValue()
                / ((Number) local.get("records_per_s")).doubleValue();
        assertEquals(expected, ratio, expected * 1e-3 + 1e-4);
        // warm-up plus two runs, each side, on stderr
        assertEquals(3, r.err().lines().filter(l -> l.contains(" binding {")).count(), r.err());
    }

    @Test
    void differentCountsExitOne(Sandbox sb, @TempDir Path dir) throws Exception {
        String url = sb.url("polls=0");
        download(sb, url, dir);
        try (var files = Files.list(dir)) {
            Files.delete(files.filter(f -> f.toString().endsWith(".ndjson")).sorted().findFirst().orElseThrow());
        }
        Result r = compare("--base", url, "--local", dir.toString());
        assertEquals(1, r.code(), r.err());
        Map<String, Object> o = oneJsonObject(r.out()); // still one JSON object
        assertTrue(((Map<?, ?>) o.get("binding")).get("records") instanceof Long b
                && ((Map<?, ?>) o.get("local")).get("records") instanceof Long l && b > l, r.out());
        assertTrue(r.err().contains("record counts differ"), r.err());
    }

    @Test
    void badArgumentsExitTwoWithNothingOnStdout() throws Exception {
        for (String[] args : List.of(new String[] {"--base"}, new String[] {"--local", "/tmp"},
                new String[] {"--base", "http://x/fhir", "--local", "/tmp", "--runs", "0"},
                new String[] {"--base", "http://x/fhir", "--local", "/tmp", "--bogus"},
                new String[] {"--base", "http://x/fhir", "--local", "/nonexistent/fhirbulk-bench"})) {
            Result r = compare(args);
            assertEquals(2, r.code(), String.join(" ", args));
            assertEquals("", r.out());
            assertTrue(r.err().contains("usage: java_bench.sh"), r.err());
        }
    }

    @Test
    void scriptParsesAndRunsThisEntryPoint() throws Exception {
        Path script = Sandbox.repoRoot().resolve("bench/java_bench.sh");
        String text = Files.readString(script);
        assertTrue(text.contains("org.fhirbulk.Bench \"$@\""), "the script runs Bench with its arguments");
        assertTrue(text.contains("test-classes") && text.contains("bench.classpath"), "classpath");
        Process p = new ProcessBuilder("bash", "-n", script.toString()).redirectErrorStream(true).start();
        assertTrue(p.waitFor(10, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8));
    }
}
