/*
 * ExportSummary: run a FHIR Bulk Data export with the fhirbulk Java binding and print what it
 * delivered, per resource type.
 *
 *   usage: java -cp fhirbulk-0.1.0.jar:jna-5.14.0.jar ExportSummary.java BASE_URL [GROUP_ID|-] [TYPES]
 *
 *     BASE_URL  FHIR server base, e.g. http://127.0.0.1:8080/fhir
 *     GROUP_ID  export one Group (Group/[id]/$export); omit or "-" for a system-level export
 *     TYPES     comma-separated resource types (_type), e.g. Patient,Observation
 *
 * (Java 11+ runs a single source file directly; or compile it with javac like any class.)
 *
 * The program starts the export, shows the server's progress from a second thread while the
 * server prepares the files, then iterates every record and counts them per resource type. On
 * failure it prints the error, its HTTP status and URL and the server's OperationOutcome issues,
 * and exits 1.
 *
 * Copy it freely: it uses only the public API of org.fhirbulk.
 */

import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.fhirbulk.Export;
import org.fhirbulk.ExportBuilder;
import org.fhirbulk.FhirBulk;
import org.fhirbulk.FhirBulkException;
import org.fhirbulk.Issue;
import org.fhirbulk.Progress;
import org.fhirbulk.BulkRecord;

public class ExportSummary {
    /** Records and bytes per "type kind". */
    static final class Count {
        long records;
        long bytes;
    }

    public static void main(String[] args) {
        if (args.length < 1 || args.length > 3 || args[0].equals("-h") || args[0].equals("--help")) {
            System.err.println("usage: ExportSummary BASE_URL [GROUP_ID|-] [TYPES]");
            System.exit(2);
        }
        String baseUrl = args[0];
        String group = args.length > 1 && !args[1].equals("-") ? args[1] : null;
        String types = args.length > 2 ? args[2] : null;

        System.out.printf("fhirbulk %s: exporting %s from %s%s%n", FhirBulk.version(),
                group != null ? "Group/" + group : "system", baseUrl, types != null ? ", types " + types : "");
        System.out.println("library: " + FhirBulk.libraryLocation());

        ExportBuilder builder = FhirBulk.export(baseUrl)
                // Poll the status URL at least every 2 s; a server's Retry-After still wins within that.
                .option("poll_min_ms", 100)
                .option("poll_max_ms", 2000);
        if (group != null) {
            builder.group(group);
        }
        if (types != null && !types.isBlank()) {
            builder.types(types.split(","));
        }

        long t0 = System.nanoTime();
        Map<String, Count> counts = new TreeMap<>();
        long total = 0;
        long bytes = 0;
        ScheduledExecutorService ticker = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "progress");
            t.setDaemon(true);
            return t;
        });
        try (Export export = builder.start()) {
            // progress() may be called from any thread; show it while the server prepares files.
            String[] last = {""};
            ticker.scheduleAtFixedRate(() -> {
                try {
                    Progress p = export.progress();
                    String line = String.format("%s; polls %d%s; files %d/%d", describe(p.state()), p.polls(),
                            p.serverProgress().isEmpty() ? "" : "; server says: " + p.serverProgress(),
                            p.filesDone(), p.filesTotal());
                    if (!line.equals(last[0]) && p.records() == 0) {
                        System.out.printf("  [%6.1f s] %s%n", (System.nanoTime() - t0) / 1e9, line);
                        last[0] = line;
                    }
                } catch (IllegalStateException closed) {
                    // the export was closed meanwhile
                }
            }, 0, 500, TimeUnit.MILLISECONDS);

            for (BulkRecord r : export) {
                // r is valid until the loop moves on: copy what you keep (r.json(), r.bytes()).
                String key = r.resourceType() + " " + r.kind().name().toLowerCase();
                Count c = counts.computeIfAbsent(key, k -> new Count());
                c.records++;
                c.bytes += r.length();
                total++;
                bytes += r.length();
            }
            ticker.shutdownNow();
            double elapsed = (System.nanoTime() - t0) / 1e9;

            System.out.printf("%n%-24s %-8s %12s %14s%n", "resource type", "kind", "records", "bytes");
            System.out.printf("%-24s %-8s %12s %14s%n", "-".repeat(24), "-".repeat(8), "-".repeat(12), "-".repeat(14));
            for (Map.Entry<String, Count> e : counts.entrySet()) {
                String[] typeKind = e.getKey().split(" ");
                System.out.printf("%-24s %-8s %12d %14d%n", typeKind[0], typeKind[1], e.getValue().records,
                        e.getValue().bytes);
            }
            System.out.printf("%-24s %-8s %12d %14d%n", "total", "", total, bytes);

            Progress p = export.progress();
            System.out.printf("%n%d files, %d bytes downloaded, %d status polls%n", p.filesTotal(), p.bytes(),
                    p.polls());
            System.out.printf("elapsed %.2f s, %.0f records/s%n", elapsed, elapsed > 0 ? total / elapsed : 0.0);
            // The manifest's transactionTime is the `since` of the next incremental export.
            export.transactionTime().ifPresent(t ->
                    System.out.println("transactionTime " + t + " (use it as since(...) next time)"));
        } catch (FhirBulkException e) {
            ticker.shutdownNow();
            System.err.printf("export failed (%s, code %d%s): %s%n", e.name(), e.code(),
                    e.httpStatus() != 0 ? ", HTTP " + e.httpStatus() : "", e.getMessage());
            for (Issue i : e.issues()) {
                System.err.printf("  issue: %s %s: %s%n", i.severity(), i.code(), i.diagnostics());
            }
            System.exit(1);
        }
    }

    static String describe(Progress.State s) {
        switch (s) {
            case KICKING_OFF: return "kicking off";
            case WAITING: return "server preparing files";
            case DOWNLOADING: return "downloading";
            case DONE: return "finishing";
            case FAILED: return "failed";
            default: return "cancelled";
        }
    }
}
