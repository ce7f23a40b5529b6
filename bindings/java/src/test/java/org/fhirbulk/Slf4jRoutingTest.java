package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Native;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * README "Logging": with {@code org.slf4j:slf4j-jdk-platform-logging} on the class path, the
 * binding's {@link System.Logger} lines reach SLF4J (here its simple provider; Logback is set up
 * the same way). In a JVM of its own with the binding, JNA, slf4j-api, the bridge and slf4j-simple:
 * the bridge takes System.Logger over for the whole JVM, so it stays off this suite's class path
 * (the pom), where AuthTest reads the lines through java.util.logging.
 */
@ExtendWith(SandboxExtension.class)
@Timeout(60)
class Slf4jRoutingTest {

    static Path codeSource(Class<?> c) throws Exception {
        return Path.of(c.getProtectionDomain().getCodeSource().getLocation().toURI());
    }

    @Test
    void theBindingsLogLinesReachSlf4jThroughTheBridge(Sandbox sb) throws Exception {
        String slf4j = System.getProperty("fhirbulk.slf4j.classpath");
        assertTrue(slf4j != null && slf4j.contains("slf4j-jdk-platform-logging"),
                "-Dfhirbulk.slf4j.classpath (set by the pom): " + slf4j);
        // This suite's JVM keeps the JDK's finder (the bridge is off its class path).
        assertFalse(System.getProperty("java.class.path").contains("slf4j-jdk-platform-logging"));
        assertFalse(System.LoggerFinder.getLoggerFinder().getClass().getName().startsWith("org.slf4j"));
        List<String> cp = List.of(codeSource(FhirBulk.class).toString(), codeSource(Slf4jRoutingMain.class).toString(),
                codeSource(Native.class).toString(), slf4j);
        String url = sb.url("polls=0");
        List<String> cmd = new ArrayList<>(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                "-Dorg.slf4j.simpleLogger.log.org.fhirbulk=debug", "-Dorg.slf4j.simpleLogger.logFile=System.out",
                "-cp", String.join(File.pathSeparator, cp), Slf4jRoutingMain.class.getName(), url));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        pb.environment().remove("JAVA_TOOL_OPTIONS");
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), out);
        assertEquals(0, p.exitValue(), out);
        assertTrue(out.contains("finder: org.slf4j.jdk.platform.logging.SLF4JSystemLoggerFinder"), out);
        assertTrue(out.contains("records: " + sb.truth("group", "g1", "Patient").get("Patient")), out);
        // slf4j-simple's "[thread] LEVEL logger - message": the binding's DEBUG lines, as SLF4J's.
        String started = "DEBUG org.fhirbulk - fhirbulk: export started: " + url + " level=group group=g1 types=Patient";
        assertTrue(out.contains(started), out);
        assertTrue(out.contains("DEBUG org.fhirbulk - fhirbulk: export complete (" + url), out);
    }
}
