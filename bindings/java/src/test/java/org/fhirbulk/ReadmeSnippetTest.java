package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.StringWriter;
import java.net.URI;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.tools.JavaCompiler;
import javax.tools.JavaFileObject;
import javax.tools.SimpleJavaFileObject;
import javax.tools.ToolProvider;
import org.junit.jupiter.api.Test;

/**
 * The READMEs' Java snippets of the record API compile as a user pastes them, with
 * {@code import org.fhirbulk.*;} on Java 17 (a class named {@code Record} there once clashed
 * with {@code java.lang.Record}). Each snippet is the body of a method, its own imports moved
 * to the top; {@code store(...)}, {@code url} and the JDK imports a snippet leaves out are
 * supplied, and {@code { ... }} stands for the reader's code.
 *
 * <p>The HAPI FHIR snippet (README "Parsing records with HAPI FHIR") compiles against stubs of
 * the few HAPI types it uses ({@link #HAPI_STUBS}, with HAPI 8.12.1's signatures): HAPI with
 * its dependencies is about 50 MB, too much for a test of one snippet. So this checks the
 * binding's side of it; the HAPI side was compiled and run against the real jars by hand.
 */
class ReadmeSnippetTest {
    static final Pattern JAVA = Pattern.compile("```java\\n(.*?)```", Pattern.DOTALL);
    static final Pattern IMPORT = Pattern.compile("(?m)^import [\\w.*]+;\\n?");

    /** HAPI FHIR's API as the README's snippet uses it: class name to source. */
    static final Map<String, String> HAPI_STUBS = Map.of(
            "ca/uhn/fhir/context/FhirContext", "package ca.uhn.fhir.context;\n"
                    + "public class FhirContext {\n"
                    + "  public static FhirContext forR4() { return new FhirContext(); }\n"
                    + "  public ca.uhn.fhir.parser.IParser newJsonParser() { return null; }\n}\n",
            "ca/uhn/fhir/parser/IParser", "package ca.uhn.fhir.parser;\n"
                    + "import org.hl7.fhir.instance.model.api.IBaseResource;\n"
                    + "public interface IParser {\n"
                    + "  IBaseResource parseResource(String theMessageString);\n"
                    + "  <T extends IBaseResource> T parseResource(Class<T> theResourceType, String theMessageString);\n}\n",
            "org/hl7/fhir/instance/model/api/IBaseResource",
                    "package org.hl7.fhir.instance.model.api;\npublic interface IBaseResource {}\n",
            "org/hl7/fhir/r4/model/Resource", "package org.hl7.fhir.r4.model;\n"
                    + "public abstract class Resource implements org.hl7.fhir.instance.model.api.IBaseResource {\n"
                    + "  public String getIdPart() { return null; }\n}\n",
            "org/hl7/fhir/r4/model/DateType", "package org.hl7.fhir.r4.model;\n"
                    + "public class DateType {\n  public String getValueAsString() { return null; }\n}\n",
            "org/hl7/fhir/r4/model/Patient", "package org.hl7.fhir.r4.model;\n"
                    + "public class Patient extends Resource {\n"
                    + "  public DateType getBirthDateElement() { return null; }\n}\n");

    static List<String> snippets(Path readme) throws Exception {
        List<String> out = new ArrayList<>();
        Matcher m = JAVA.matcher(Files.readString(readme));
        while (m.find()) {
            String s = m.group(1);
            // The record API's snippets (the Arrow, Parquet and Spark ones need other jars).
            if (s.contains("FhirBulk.export(") && !s.contains("Arrow") && !s.contains("Parquet")
                    && !s.contains("spark")) {
                // "{ ... }" stands for the reader's own code.
                out.add(s.replace("import org.fhirbulk.*;", "").replace("{ ... }", "{ }"));
            }
        }
        return out;
    }

    static JavaFileObject source(String className, String src) {
        return new SimpleJavaFileObject(URI.create("string:///" + className + ".java"), JavaFileObject.Kind.SOURCE) {
            @Override
            public CharSequence getCharContent(boolean ignoreEncodingErrors) {
                return src;
            }
        };
    }

    @Test
    void theHapiSnippetIsThere() throws Exception {
        long hapi = snippets(Sandbox.repoRoot().resolve("bindings/java/README.md")).stream()
                .filter(s -> s.contains("FhirContext.forR4()") && s.contains("parseResource(")).count();
        assertEquals(1, hapi, "the README's HAPI FHIR snippet");
    }

    @Test
    void theReadmeSnippetsCompileWithAWildcardImport() throws Exception {
        Path root = Sandbox.repoRoot();
        List<String> all = new ArrayList<>();
        all.addAll(snippets(root.resolve("README.md")));
        all.addAll(snippets(root.resolve("bindings/java/README.md")));
        assertTrue(all.size() >= 2, "snippets found: " + all.size());
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        assertNotNull(javac, "a JDK's compiler");
        for (String snippet : all) {
            StringBuilder imports = new StringBuilder();
            Matcher im = IMPORT.matcher(snippet);
            while (im.find()) {
                imports.append(im.group().strip()).append('\n');
            }
            String body = IMPORT.matcher(snippet).replaceAll("");
            String src = "import org.fhirbulk.*;\nimport java.nio.file.*;\nimport java.time.*;\nimport java.util.*;\n"
                    + imports
                    + "class Snippet {\n  static void store(String type, String json) {}\n"
                    + "  static String url = \"https://ehr.example.org/r4\";\n"
                    + "  static void run() throws Exception {\n" + body + "\n  }\n}\n";
            List<JavaFileObject> files = new ArrayList<>(List.of(source("Snippet", src)));
            if (imports.toString().contains("ca.uhn.fhir")) {
                HAPI_STUBS.forEach((name, stub) -> files.add(source(name, stub)));
            }
            StringWriter errors = new StringWriter();
            Path out = Files.createTempDirectory("snippet");
            boolean ok = javac.getTask(errors, null, null,
                    List.of("--release", "17", "-d", out.toString(), "-classpath", System.getProperty("java.class.path")),
                    null, files).call();
            assertTrue(ok, "the snippet does not compile:\n" + body + "\n" + errors);
        }
    }
}
