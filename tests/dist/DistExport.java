/*
 * make test-dist: a Java program built against the dist jar from a clean class path (the jar and
 * what its pom brings, JNA). Exports BASE_URL's Group GROUP (TYPES) and writes every output
 * record, one JSON line each, to OUT; prints where the library was loaded from.
 *
 *   java -cp fhirbulk-V.jar:jna-5.14.0.jar DistExport.java BASE_URL GROUP TYPES OUT
 */

import java.io.FileOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import org.fhirbulk.BulkRecord;
import org.fhirbulk.Export;
import org.fhirbulk.FhirBulk;
import org.fhirbulk.Kind;

public class DistExport {
    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: DistExport BASE_URL GROUP TYPES OUT");
            System.exit(2);
        }
        long records = 0;
        try (Export export = FhirBulk.export(args[0]).group(args[1]).types(args[2].split(",")).start();
                PrintStream out = new PrintStream(new FileOutputStream(args[3]), false, StandardCharsets.UTF_8)) {
            for (BulkRecord r : export) {
                if (r.kind() == Kind.OUTPUT) {
                    out.println(r.json());
                    records++;
                }
            }
        }
        System.out.println("fhirbulk " + FhirBulk.version() + ": " + records + " records; library "
                + FhirBulk.libraryLocation());
    }
}
