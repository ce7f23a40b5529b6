package org.fhirbulk;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * Clinical documents (config {@code attachments}) against the sandbox, whose DocumentReference
 * and DiagnosticReport resources link documents that fetch fine, are missing (404), forbidden
 * (403), fail (500), do not match their declared hash, or are large (1.2–1.4 MB), and whose
 * {@code /_sandbox/truth?attachments=1} says which is which (and each document's SHA-1).
 */
@ExtendWith(SandboxExtension.class)
@Timeout(120)
class AttachmentTest {
    static final String TYPES = "DocumentReference,DiagnosticReport";
    static final String SCENARIO = "polls=0";
    /** Below the sandbox's large documents (1.2–1.4 MB): they fail too. */
    static final long CAP = 1_000_000;
    /** Outcomes that give an error record (with {@link #CAP}). */
    static final Set<String> FAILING = Set.of("missing", "forbidden", "server_error", "hash_mismatch", "large");

    /** One entry of the sandbox's attachment truth. */
    record Truth(String resource, int position, String path, String url, String contentType, long size, String sha1,
            String outcome) {
        String key() {
            return resource + "#" + position;
        }
    }

    @SuppressWarnings("unchecked")
    static List<Truth> truth(Sandbox sb) throws Exception {
        String q = "/_sandbox/truth?level=group&group=g1&_type=" + TYPES + "&attachments=1";
        List<Truth> out = new ArrayList<>();
        for (Object o : (List<Object>) Json.parse(sb.get(q))) {
            Map<String, Object> m = (Map<String, Object>) o;
            out.add(new Truth((String) m.get("resource"), ((Long) m.get("position")).intValue(), (String) m.get("path"),
                    (String) m.get("url"), (String) m.get("contentType"), (Long) m.get("size"), (String) m.get("sha1"),
                    (String) m.get("outcome")));
        }
        return out;
    }

    /** A save-mode export with retries short enough that the 500s fail fast. */
    static ExportBuilder export(Sandbox sb) {
        return FhirBulk.export(sb.url(SCENARIO)).group("g1").types(TYPES.split(","))
                .option("retry_max_attempts", 2)
                .option("retry_backoff_min_ms", 10)
                .option("retry_backoff_max_ms", 20);
    }

    static byte[] sha1(byte[] b) throws Exception {
        return MessageDigest.getInstance("SHA-1").digest(b);
    }

    static String idOf(BulkRecord r) {
        return r.resourceType() + "/" + Json.parseObject(r.json()).get("id");
    }

    /** The value at a path such as {@code content[0].attachment} or {@code presentedForm[1]}. */
    @SuppressWarnings("unchecked")
    static Map<String, Object> at(Map<String, Object> resource, String path) {
        Object cur = resource;
        for (String part : path.split("\\.")) {
            int b = part.indexOf('[');
            String name = b < 0 ? part : part.substring(0, b);
            cur = ((Map<String, Object>) cur).get(name);
            if (b >= 0) {
                int index = Integer.parseInt(part.substring(b + 1, part.length() - 1));
                cur = ((List<Object>) cur).get(index);
            }
        }
        return (Map<String, Object>) cur;
    }

    /** What a save-mode export delivered. */
    static final class Delivered {
        final Map<String, AttachmentInfo> docs = new LinkedHashMap<>();
        final Map<String, byte[]> sha1s = new LinkedHashMap<>();
        final Map<String, AttachmentError> errors = new LinkedHashMap<>();
        final List<String> ids = new ArrayList<>();
        long records;
        Progress progress;
    }

    /**
     * Reads a save-mode export to its end, checking the order: the attachment and error records
     * of a record come right before it among the records of its file (batches of other files
     * may come in between), with its type, file index and line, and name it.
     */
    static Delivered readSaved(Export export) throws Exception {
        Delivered d = new Delivered();
        // Per file: the attachment and error records since the file's last resource.
        Map<Integer, List<BulkRecord>> pendingByFile = new TreeMap<>();
        Map<Integer, List<String>> pendingKeysByFile = new TreeMap<>();
        for (BulkRecord r : export) {
            d.records++;
            List<BulkRecord> pending = pendingByFile.computeIfAbsent(r.fileIndex(), k -> new ArrayList<>());
            List<String> pendingKeys = pendingKeysByFile.computeIfAbsent(r.fileIndex(), k -> new ArrayList<>());
            switch (r.kind()) {
                case ATTACHMENT -> {
                    AttachmentInfo info = r.attachment();
                    assertNotNull(info, r.toString());
                    byte[] content = r.content();
                    assertEquals(r.contentLength(), content.length, r.toString());
                    assertEquals(info.size(), content.length, info.toString());
                    byte[] digest = sha1(content);
                    assertEquals(Base64.getEncoder().encodeToString(digest), info.hash(), info.toString());
                    ByteBuffer view = r.contentBuffer();
                    assertTrue(view.isReadOnly() && view.isDirect());
                    byte[] fromView = new byte[view.remaining()];
                    view.get(fromView);
                    assertArrayEquals(content, fromView);
                    assertNull(r.attachmentError());
                    assertTrue(r.toString().contains("document " + content.length + " bytes"), r.toString());
                    assertFalse(r.toString().contains("{"), "toString shows no content");
                    String key = info.resource() + "#" + info.position();
                    assertNull(d.docs.put(key, info), "one attachment record per attachment: " + key);
                    d.sha1s.put(key, digest);
                    pending.add(r);
                    pendingKeys.add(key);
                }
                case ERROR -> {
                    AttachmentError e = r.attachmentError();
                    assertNotNull(e, "the sandbox's error files are not exported here: " + r.json());
                    assertNull(r.content());
                    assertNull(r.attachment());
                    assertFalse(e.diagnostics().isEmpty(), e.toString());
                    assertFalse(e.code().isEmpty(), e.toString());
                    String key = e.resource() + "#" + e.position();
                    assertNull(d.errors.put(key, e), "one error record per attachment: " + key);
                    pending.add(r);
                    pendingKeys.add(key);
                }
                case OUTPUT -> {
                    assertNull(r.content());
                    assertNull(r.contentBuffer());
                    assertEquals(0, r.contentLength());
                    String id = idOf(r);
                    d.ids.add(id);
                    Map<String, Object> resource = Json.parseObject(r.json());
                    for (int i = 0; i < pending.size(); i++) {
                        BulkRecord p = pending.get(i);
                        String key = pendingKeys.get(i);
                        assertTrue(key.startsWith(id + "#"), key + " comes right before " + id);
                        if (p.kind() == Kind.ATTACHMENT) {
                            assertEquals(r.resourceType(), p.resourceType(), p.toString());
                        } else {
                            // (The engine types its error records OperationOutcome, as those of
                            // invalid lines; file index and line are the linking record's.)
                            assertTrue(p.resourceType().equals("OperationOutcome")
                                    || p.resourceType().equals(r.resourceType()), p.toString());
                        }
                        assertEquals(r.fileIndex(), p.fileIndex(), p.toString());
                        assertEquals(r.line(), p.line(), p.toString());
                        AttachmentInfo info = d.docs.get(key);
                        if (p.kind() == Kind.ATTACHMENT) {
                            // The record's url now names the file.
                            assertEquals(info.file(), at(resource, info.path()).get("url"), key);
                        } else {
                            AttachmentError e = d.errors.get(key);
                            assertFalse(at(resource, e.path()).containsKey("data"), key);
                        }
                    }
                    pending.clear();
                    pendingKeys.clear();
                }
                default -> throw new AssertionError("unexpected " + r);
            }
        }
        pendingKeysByFile.values().removeIf(List::isEmpty);
        assertTrue(pendingKeysByFile.isEmpty(), "attachment records with no record after them: " + pendingKeysByFile);
        d.progress = export.progress();
        return d;
    }

    @Test
    void saveModeDeliversEachDocumentOnceRightBeforeItsRecord(Sandbox sb) throws Exception {
        List<Truth> truth = truth(sb);
        Delivered d;
        try (Export export = export(sb).attachments(AttachmentMode.SAVE).attachmentMaxBytes(CAP).start()) {
            d = readSaved(export);
        }
        Map<String, Truth> ok = new TreeMap<>();
        Map<String, Truth> failing = new TreeMap<>();
        Map<String, Long> outcomes = new TreeMap<>();
        for (Truth t : truth) {
            outcomes.merge(t.outcome(), 1L, Long::sum);
            if (t.outcome().equals("ok")) {
                ok.put(t.key(), t);
            } else if (FAILING.contains(t.outcome())) {
                failing.put(t.key(), t);
            } else {
                assertEquals("inline", t.outcome(), t.toString());
            }
        }
        for (String o : List.of("ok", "inline", "missing", "forbidden", "server_error", "hash_mismatch", "large")) {
            assertTrue(outcomes.getOrDefault(o, 0L) > 0, "the sandbox has " + o + " attachments: " + outcomes);
        }
        // Every document that fetches fine, exactly once, with its bytes.
        assertEquals(ok.keySet(), d.docs.keySet());
        for (Truth t : ok.values()) {
            AttachmentInfo info = d.docs.get(t.key());
            assertEquals(t.sha1(), HexFormat.of().formatHex(d.sha1s.get(t.key())), t.toString());
            assertEquals(t.size(), info.size(), t.toString());
            assertEquals(t.path(), info.path(), t.toString());
            assertEquals(t.url(), info.url(), t.toString());
            assertEquals(t.contentType(), info.contentType(), t.toString());
            assertTrue(info.file().startsWith("attachments/"), info.toString());
        }
        // Every failure, exactly once, naming its attachment.
        assertEquals(failing.keySet(), d.errors.keySet());
        for (Truth t : failing.values()) {
            AttachmentError e = d.errors.get(t.key());
            assertEquals(t.path(), e.path(), t.toString());
            assertEquals(t.url(), e.url(), t.toString());
            String code = switch (t.outcome()) {
                case "missing" -> "not-found";
                case "forbidden" -> "forbidden";
                case "hash_mismatch" -> "value";
                case "large" -> "too-costly";
                default -> "exception"; // server_error: a 500, after the retries
            };
            assertEquals(code, e.code(), e.toString());
            assertEquals(t.resource(), e.resource(), e.toString());
            assertTrue(e.diagnostics().contains(t.resource()), e.toString());
        }
        Progress p = d.progress;
        assertEquals(Progress.State.DONE, p.state());
        assertEquals(ok.size(), p.attachmentsFetched());
        assertEquals(failing.size(), p.attachmentErrors());
        assertEquals(d.records, p.records());
        // And every resource, once.
        List<String> ids = new ArrayList<>(d.ids);
        ids.sort(null);
        assertEquals(sb.truthIds("group", "g1", TYPES), ids);
    }

    @Test
    void withoutACapLargeDocumentsArriveAndAnotherDirIsNamed(Sandbox sb) throws Exception {
        List<Truth> truth = truth(sb);
        Delivered d;
        try (Export export = export(sb).attachments(AttachmentMode.SAVE).attachmentDir("docs/x/").start()) {
            d = readSaved(export);
        }
        Set<String> want = new TreeSet<>();
        for (Truth t : truth) {
            if (t.outcome().equals("ok") || t.outcome().equals("large")) {
                want.add(t.key());
                if (t.outcome().equals("large")) {
                    assertTrue(t.size() > 1_000_000, t.toString());
                }
            }
        }
        assertEquals(want, new TreeSet<>(d.docs.keySet()));
        for (Truth t : truth) {
            if (want.contains(t.key())) {
                assertEquals(t.sha1(), HexFormat.of().formatHex(d.sha1s.get(t.key())), t.toString());
                assertTrue(d.docs.get(t.key()).file().startsWith("docs/x/"), d.docs.get(t.key()).toString());
            }
        }
        assertEquals(want.size(), d.progress.attachmentsFetched());
        assertEquals(d.errors.size(), d.progress.attachmentErrors());
    }

    @Test
    void contentTypesNarrowWhatIsFetched(Sandbox sb) throws Exception {
        List<Truth> truth = truth(sb);
        Delivered d;
        try (Export export = export(sb).attachments(AttachmentMode.SAVE).attachmentMaxBytes(CAP)
                .attachmentContentTypes("text/*").start()) {
            d = readSaved(export);
        }
        Set<String> want = new TreeSet<>();
        for (Truth t : truth) {
            if (t.outcome().equals("ok") && t.contentType().startsWith("text/")) {
                want.add(t.key());
            }
        }
        assertFalse(want.isEmpty(), "the sandbox has text documents");
        assertEquals(want, new TreeSet<>(d.docs.keySet()));
        for (AttachmentInfo info : d.docs.values()) {
            assertTrue(info.contentType().startsWith("text/"), info.toString());
        }
    }

    @Test
    void inlineModePutsTheDocumentsInTheirRecords(Sandbox sb) throws Exception {
        List<Truth> truth = truth(sb);
        Map<String, Map<String, Object>> records = new TreeMap<>();
        Set<String> errors = new HashSet<>();
        Progress p;
        try (Export export = export(sb).attachments(AttachmentMode.INLINE).attachmentMaxBytes(CAP).start()) {
            for (BulkRecord r : export) {
                assertTrue(r.kind() == Kind.OUTPUT || r.kind() == Kind.ERROR, r.toString());
                assertNull(r.content());
                if (r.kind() == Kind.ERROR) {
                    AttachmentError e = r.attachmentError();
                    assertNotNull(e, r.json());
                    assertTrue(errors.add(e.resource() + "#" + e.position()), e.toString());
                } else {
                    records.put(idOf(r), Json.parseObject(r.json()));
                }
            }
            p = export.progress();
        }
        long ok = 0;
        for (Truth t : truth) {
            Map<String, Object> a = at(records.get(t.resource()), t.path());
            if (t.outcome().equals("ok") || t.outcome().equals("inline")) {
                byte[] doc = Base64.getDecoder().decode((String) a.get("data"));
                assertEquals(t.sha1(), HexFormat.of().formatHex(sha1(doc)), t.toString());
                ok += t.outcome().equals("ok") ? 1 : 0;
            } else {
                assertTrue(FAILING.contains(t.outcome()), t.toString());
                assertTrue(errors.contains(t.key()), t.toString());
                assertFalse(a.containsKey("data"), t.toString());
            }
        }
        assertEquals(ok, p.attachmentsFetched());
        assertEquals(errors.size(), p.attachmentErrors());
    }

    @Test
    void withoutAttachmentsNothingIsFetched(Sandbox sb) throws Exception {
        try (Export export = export(sb).start()) {
            for (BulkRecord r : export) {
                assertEquals(Kind.OUTPUT, r.kind(), r.toString());
                assertNull(r.content());
                assertNull(r.contentBuffer());
                assertNull(r.attachment());
                assertNull(r.attachmentError());
                assertEquals(0, r.contentLength());
            }
            Progress p = export.progress();
            assertEquals(0, p.attachmentsFetched());
            assertEquals(0, p.attachmentErrors());
        }
        // NONE is the default, said explicitly.
        try (Export export = export(sb).attachments(AttachmentMode.NONE).start()) {
            for (BulkRecord r : export) {
                assertEquals(Kind.OUTPUT, r.kind(), r.toString());
            }
        }
    }

    @Test
    void aDocumentIsInvalidOnceTheIterationMovesOn(Sandbox sb) throws Exception {
        try (Export export = export(sb).attachments(AttachmentMode.SAVE).attachmentMaxBytes(CAP).start()) {
            BulkRecord doc = null;
            for (BulkRecord r : export) {
                if (doc != null) {
                    break; // the next record: doc's batch may still be current (several lines)
                }
                if (r.kind() == Kind.ATTACHMENT) {
                    doc = r;
                }
            }
            assertNotNull(doc);
            // An attachment chunk holds one record: the pull after it released it.
            BulkRecord stale = doc;
            assertThrows(IllegalStateException.class, stale::content);
            assertThrows(IllegalStateException.class, stale::contentBuffer);
            assertThrows(IllegalStateException.class, stale::attachment);
            assertTrue(stale.contentLength() > 0, "the metadata stays");
        }
    }

    @Test
    void aCheckpointBetweenADocumentAndItsRecordResumesExactly(Sandbox sb) throws Exception {
        List<String> first = new ArrayList<>();
        String checkpoint;
        String files;
        try (Export export = export(sb).attachments(AttachmentMode.SAVE).attachmentMaxBytes(CAP)
                .option("delete_on_cancel", false).start()) {
            int docs = 0;
            for (BulkRecord r : export) {
                first.add(key(r));
                if (r.kind() == Kind.ATTACHMENT && ++docs == 3) {
                    break;
                }
            }
            assertEquals(3, docs);
            checkpoint = export.checkpoint();
            files = export.files();
        }
        List<String> all = new ArrayList<>();
        try (Export full = export(sb).attachments(AttachmentMode.SAVE).attachmentMaxBytes(CAP).start()) {
            for (BulkRecord r : full) {
                all.add(key(r));
            }
        }
        List<String> rest = new ArrayList<>();
        try (Export resumed = export(sb).attachments(AttachmentMode.SAVE).attachmentMaxBytes(CAP)
                .resume(checkpoint).resumeFiles(files).start()) {
            for (BulkRecord r : resumed) {
                rest.add(key(r));
            }
        }
        List<String> both = new ArrayList<>(first);
        both.addAll(rest);
        // Each record (document, error, resource) exactly once over the two exports.
        assertEquals(new HashSet<>(both).size(), both.size(), "nothing twice");
        both.sort(null);
        all.sort(null);
        assertEquals(all, both);
    }

    /** What a record is, to compare exports: the document's attachment, or the resource. */
    static String key(BulkRecord r) {
        return switch (r.kind()) {
            case ATTACHMENT -> "doc " + r.attachment().resource() + "#" + r.attachment().position();
            case ERROR -> "error " + r.attachmentError().resource() + "#" + r.attachmentError().position();
            default -> "record " + idOf(r);
        };
    }

    @Test
    void configErrorsNameTheBuilderCalls(Sandbox sb) {
        assertEquals("invalid config: ExportBuilder.attachmentDir(\"/abs/\") must be a relative directory ending in "
                + "'/', without '..' (or empty)",
                JavaTermsTest.refused(export(sb).attachments(AttachmentMode.SAVE).attachmentDir("/abs/")).getMessage());
        assertEquals("invalid config: ExportBuilder.attachmentMaxBytes(long) must be between 1 and 2147483648, got 0",
                JavaTermsTest.refused(export(sb).attachmentMaxBytes(0)).getMessage());
        String m = JavaTermsTest.refused(export(sb).attachmentTypes("Observation")).getMessage();
        assertTrue(m.startsWith("invalid config: ExportBuilder.attachmentTypes(String...) has \"Observation\", whose "
                + "attachments fhirbulk does not know where to find; it knows DocumentReference, DiagnosticReport"), m);
        assertEquals("invalid config: ExportBuilder.attachments(AttachmentMode) is on but "
                + "ExportBuilder.attachmentTypes(String...) is empty",
                JavaTermsTest.refused(export(sb).attachments(AttachmentMode.INLINE).attachmentTypes()).getMessage());
        assertEquals("invalid config: ExportBuilder.attachmentContentTypes(String...) has \"pdf\"; expected a media "
                + "type such as application/pdf or text/*",
                JavaTermsTest.refused(export(sb).attachmentContentTypes("pdf")).getMessage());
        assertEquals("invalid config: ExportBuilder.option(\"attachments\", ...) must be \"none\", \"inline\" or "
                + "\"save\", not \"yes\"", JavaTermsTest.refused(export(sb).option("attachments", "yes")).getMessage());
        assertEquals("invalid config: ExportBuilder.option(\"attachment_max_bytes\", ...) must be a long of 0 or more, "
                + "not the int -1", JavaTermsTest.refused(export(sb).option("attachment_max_bytes", -1)).getMessage());
    }
}
