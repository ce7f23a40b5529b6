package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Native;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * Runs after the jar is built (surefire execution in phase package): a separate JVM with a clean
 * classpath — the jar and JNA, nothing else, no library path — runs examples/java/ExportSummary.java
 * against the sandbox. The library must come out of the jar. examples/java/ExportParquet.java runs
 * the same way: the native Parquet writer needs no Arrow, parquet-java or Hadoop class, and no
 * JVM flag.
 */
@ExtendWith(SandboxExtension.class)
@Timeout(120)
class BundledJarTest {
    record Result(int exit, String out) {}

    static Path jar() {
        String jar = System.getProperty("fhirbulk.jar");
        if (jar == null) {
            throw new IllegalStateException("-Dfhirbulk.jar not set (run through mvn package)");
        }
        Path p = Path.of(jar);
        assertTrue(Files.isRegularFile(p), "the jar exists: " + p);
        return p;
    }

    static Path jnaJar() throws Exception {
        return Path.of(Native.class.getProtectionDomain().getCodeSource().getLocation().toURI());
    }

    static Result run(List<String> jvmArgs, String... args) throws Exception {
        return run("ExportSummary.java", List.of(), jvmArgs, args);
    }

    /** Runs examples/java/{@code example} with the jar, JNA and {@code extraJars} as class path. */
    static Result run(String example, List<Path> extraJars, List<String> jvmArgs, String... args) throws Exception {
        Path java = Path.of(System.getProperty("java.home"), "bin", "java");
        List<String> cp = new ArrayList<>(List.of(jar().toString(), jnaJar().toString()));
        extraJars.forEach(j -> cp.add(j.toString()));
        List<String> cmd = new ArrayList<>();
        cmd.add(java.toString());
        cmd.addAll(jvmArgs);
        cmd.add("-cp");
        cmd.add(String.join(File.pathSeparator, cp));
        cmd.add(Sandbox.repoRoot().resolve("examples/java/" + example).toString());
        cmd.addAll(List.of(args));
        Path work = Files.createTempDirectory("fhirbulk-jar-test");
        ProcessBuilder pb = new ProcessBuilder(cmd).directory(work.toFile()).redirectErrorStream(true);
        pb.environment().remove("LD_LIBRARY_PATH");
        pb.environment().remove("CLASSPATH");
        pb.environment().remove("JAVA_TOOL_OPTIONS");
        Process p = pb.start();
        byte[] out = p.getInputStream().readAllBytes();
        assertTrue(p.waitFor(90, TimeUnit.SECONDS));
        Files.deleteIfExists(work);
        return new Result(p.exitValue(), new String(out, StandardCharsets.UTF_8));
    }

    static Map<String, Long> counts(String out) {
        Map<String, Long> m = new TreeMap<>();
        Matcher x = Pattern.compile("(?m)^(\\w+)\\s+output\\s+(\\d+)\\s+\\d+$").matcher(out);
        while (x.find()) {
            m.put(x.group(1), Long.parseLong(x.group(2)));
        }
        return m;
    }

    @Test
    void theJarLoadsItsBundledLibraryInACleanJvm(Sandbox sb) throws Exception {
        Result r = run(List.of(), sb.url("polls=2;retry_after=0"), "g1", "Patient,Observation");
        assertEquals(0, r.exit(), r.out());
        assertEquals(sb.truth("group", "g1", "Patient,Observation"), counts(r.out()), r.out());
        Matcher lib = Pattern.compile("(?m)^library: (.*)$").matcher(r.out());
        assertTrue(lib.find(), r.out());
        String location = lib.group(1);
        // Extracted from the jar to a temporary file, not taken from the build tree.
        assertFalse(location.contains("/target/"), location);
        assertTrue(r.out().contains("transactionTime"), r.out());
    }

    @Test
    void theLibraryPathPropertyOverridesTheBundledLibrary(Sandbox sb) throws Exception {
        Path dir = Path.of(LibFhirBulk.LOCATION).getParent(); // target/classes/linux-x86-64 here
        Result r = run(List.of("-Dfhirbulk.library.path=" + dir), sb.url("polls=0"), "g2", "Patient");
        assertEquals(0, r.exit(), r.out());
        assertTrue(r.out().contains("library: " + dir.resolve("libfhirbulk.so")), r.out());
        assertEquals(sb.truth("group", "g2", "Patient"), counts(r.out()), r.out());
    }

    @Test
    void theParquetExampleRunsWithTheJarAndJnaOnly(Sandbox sb) throws Exception {
        Path dir = Files.createTempDirectory("fhirbulk-parquet-example");
        try {
            Result r = run("ExportParquet.java", List.of(), List.of(), sb.url("polls=0"), "g1", "Patient,Observation",
                    dir.toString(), "zstd");
            assertEquals(0, r.exit(), r.out());
            Map<String, Long> truth = sb.truth("group", "g1", "Patient,Observation");
            Map<String, Long> rows = new TreeMap<>();
            Matcher m = Pattern.compile("(?m)^(\\w+)\\s+(\\d+) rows\\s+(\\d+) parts\\s+(\\d+) bytes").matcher(r.out());
            while (m.find()) {
                rows.put(m.group(1), Long.parseLong(m.group(2)));
                long bytes = 0;
                int parts = 0;
                try (var files = Files.list(dir.resolve(m.group(1)))) {
                    for (Path p : (Iterable<Path>) files::iterator) {
                        assertTrue(p.getFileName().toString().matches("part-\\d{5}\\.parquet"), p.toString());
                        bytes += Files.size(p);
                        parts++;
                    }
                }
                assertEquals(Long.parseLong(m.group(3)), parts, r.out());
                assertEquals(Long.parseLong(m.group(4)), bytes, r.out());
            }
            assertEquals(truth, rows, r.out());
            assertTrue(r.out().contains(truth.values().stream().mapToLong(Long::longValue).sum() + " rows in"), r.out());

            // Again into the same directory: refused, unless overwrite.
            Result again = run("ExportParquet.java", List.of(), List.of(), sb.url("polls=0"), "g1", "Patient",
                    dir.toString());
            assertNotEquals(0, again.exit(), again.out());
            assertTrue(again.out().contains("FileAlreadyExistsException") && again.out().contains("overwrite(true)"),
                    again.out());
            Result over = run("ExportParquet.java", List.of(), List.of(), sb.url("polls=0"), "g1", "Patient",
                    dir.toString(), "overwrite");
            assertEquals(0, over.exit(), over.out());
            assertFalse(Files.exists(dir.resolve("Observation")), "the old parts are gone: " + over.out());
        } finally {
            try (var files = Files.walk(dir)) {
                files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }

    @Test
    void aWrongLibraryPathFailsClearly(Sandbox sb) throws Exception {
        Result r = run(List.of("-Dfhirbulk.library.path=/nonexistent/libfhirbulk.so"), sb.url("polls=0"));
        assertNotEquals(0, r.exit(), r.out());
        assertTrue(r.out().contains("UnsatisfiedLinkError")
                && r.out().contains("fhirbulk.library.path=/nonexistent/libfhirbulk.so"), r.out());
    }
}
