package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.StringWriter;
import java.net.URI;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
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
 * with {@code java.lang.Record}). Each snippet is the body of a method; {@code store(...)},
 * {@code url} and the JDK imports a snippet leaves out are supplied, and {@code { ... }} stands
 * for the reader's code.
 */
class ReadmeSnippetTest {
    static final Pattern JAVA = Pattern.compile("```java\\n(.*?)```", Pattern.DOTALL);

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

    @Test
    void theReadmeSnippetsCompileWithAWildcardImport() throws Exception {
        Path root = Sandbox.repoRoot();
        List<String> all = new ArrayList<>();
        all.addAll(snippets(root.resolve("README.md")));
        all.addAll(snippets(root.resolve("bindings/java/README.md")));
        assertTrue(all.size() >= 2, "snippets found: " + all.size());
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        assertNotNull(javac, "a JDK's compiler");
        for (String body : all) {
            String src = "import org.fhirbulk.*;\nimport java.nio.file.*;\nimport java.time.*;\nimport java.util.*;\n"
                    + "class Snippet {\n  static void store(String type, String json) {}\n"
                    + "  static String url = \"https://ehr.example.org/r4\";\n"
                    + "  static void run() throws Exception {\n" + body + "\n  }\n}\n";
            JavaFileObject file = new SimpleJavaFileObject(URI.create("string:///Snippet.java"),
                    JavaFileObject.Kind.SOURCE) {
                @Override
                public CharSequence getCharContent(boolean ignoreEncodingErrors) {
                    return src;
                }
            };
            StringWriter errors = new StringWriter();
            Path out = Files.createTempDirectory("snippet");
            boolean ok = javac.getTask(errors, null, null,
                    List.of("--release", "17", "-d", out.toString(), "-classpath", System.getProperty("java.class.path")),
                    null, List.of(file)).call();
            assertTrue(ok, "the snippet does not compile:\n" + body + "\n" + errors);
        }
    }
}
