/*
 * test_full_export: a complete Group export against the sandbox, consumed record by record and
 * then again in batches; exact per-type counts are compared with the sandbox's truth.
 *
 * usage: test_full_export SERVER_ROOT TRUTH_JSON TYPES
 *   SERVER_ROOT  http://127.0.0.1:PORT
 *   TRUTH_JSON   GET /_sandbox/truth?level=group&group=g1&_type=TYPES, e.g. {"Patient":50,...}
 *   TYPES        comma-separated resource types, e.g. Patient,Observation,Condition
 */
#include "test_util.h"

#define MAX_TYPES 16

typedef struct {
    char name[64];
    long count;
} TypeCount;

typedef struct {
    TypeCount types[MAX_TYPES];
    size_t ntypes;
    long total;
    long error_records; /* kind == FHIRBULK_KIND_ERROR */
    uint64_t payload_bytes;
    uint64_t *last_line; /* by file_index: the last line seen (0 = none) */
    long *per_file;      /* by file_index: records seen */
    size_t nfiles;
} Tally;

static void tally_free(Tally *t) {
    free(t->last_line);
    free(t->per_file);
    memset(t, 0, sizeof *t);
}

static void tally_grow(Tally *t, size_t file_index) {
    if (file_index < t->nfiles) return;
    size_t n = file_index + 1;
    uint64_t *ll = realloc(t->last_line, n * sizeof *ll);
    long *pf = realloc(t->per_file, n * sizeof *pf);
    if (ll == NULL || pf == NULL) FAIL("out of memory");
    for (size_t i = t->nfiles; i < n; i++) {
        ll[i] = 0;
        pf[i] = 0;
    }
    t->last_line = ll;
    t->per_file = pf;
    t->nfiles = n;
}

static long *type_slot(Tally *t, const char *name) {
    for (size_t i = 0; i < t->ntypes; i++) {
        if (strcmp(t->types[i].name, name) == 0) return &t->types[i].count;
    }
    if (t->ntypes == MAX_TYPES) FAIL("too many resource types");
    CHECK(strlen(name) < sizeof t->types[0].name, "resource type too long: %s", name);
    strcpy(t->types[t->ntypes].name, name);
    t->types[t->ntypes].count = 0;
    return &t->types[t->ntypes++].count;
}

static long type_count(const Tally *t, const char *name) {
    for (size_t i = 0; i < t->ntypes; i++) {
        if (strcmp(t->types[i].name, name) == 0) return t->types[i].count;
    }
    return 0;
}

/* Bounded substring search (memmem is a GNU extension). */
static int contains(const uint8_t *hay, size_t len, const char *needle) {
    size_t n = strlen(needle);
    if (n == 0) return 1;
    for (size_t i = 0; i + n <= len; i++) {
        if (hay[i] == (uint8_t)needle[0] && memcmp(hay + i, needle, n) == 0) return 1;
    }
    return 0;
}

/* Validate one record view and add it to the tally. */
static void tally_record(Tally *t, const FhirbulkRecord *r) {
    CHECK(r->data != NULL && r->len > 0, "empty record (file %u line %" PRIu64 ")",
          r->file_index, r->line);
    CHECK(memchr(r->data, '\n', r->len) == NULL, "record contains a newline (file %u line %" PRIu64 ")",
          r->file_index, r->line);
    CHECK(r->data[0] == '{' && r->data[r->len - 1] == '}',
          "record is not a JSON object: %.*s", (int)(r->len > 200 ? 200 : r->len),
          (const char *)r->data);
    CHECK(r->resource_type != NULL, "resource_type is NULL");
    CHECK(strlen(r->resource_type) == r->resource_type_len,
          "resource_type not NUL-terminated at resource_type_len (%zu vs strlen %zu)",
          r->resource_type_len, strlen(r->resource_type));
    CHECK(r->resource_type_len > 0, "empty resource_type");
    CHECK(r->kind == FHIRBULK_KIND_OUTPUT || r->kind == FHIRBULK_KIND_ERROR ||
              r->kind == FHIRBULK_KIND_DELETED,
          "bad kind %u", r->kind);
    CHECK(r->line >= 1, "line numbers are 1-based, got %" PRIu64, r->line);

    /* The resource really is of the type the view claims. */
    char needle[96];
    snprintf(needle, sizeof needle, "\"%s\"", r->resource_type);
    CHECK(contains(r->data, r->len, "\"resourceType\"") && contains(r->data, r->len, needle),
          "record of type %s does not mention it: %.*s", r->resource_type,
          (int)(r->len > 200 ? 200 : r->len), (const char *)r->data);

    tally_grow(t, r->file_index);
    CHECK(r->line > t->last_line[r->file_index],
          "line numbers must strictly increase per file (no duplicates): file %u got line %" PRIu64
          " after line %" PRIu64,
          r->file_index, r->line, t->last_line[r->file_index]);
    t->last_line[r->file_index] = r->line;
    t->per_file[r->file_index]++;

    if (r->kind == FHIRBULK_KIND_ERROR) {
        t->error_records++;
    } else {
        (*type_slot(t, r->resource_type))++;
    }
    t->total++;
    t->payload_bytes += r->len;
}

/* Copy a text output (export_manifest / export_files_json / last_error) into a fresh heap
 * buffer, checking the snprintf contract on the way. */
typedef size_t (*TextFn)(const FhirbulkExport *, char *, size_t);

static char *fetch_text(const FhirbulkExport *h, TextFn fn, const char *what) {
    size_t n = fn(h, NULL, 0);
    char *buf = malloc(n + 1);
    if (buf == NULL) FAIL("out of memory");
    size_t n2 = fn(h, buf, n + 1);
    CHECK(n2 == n, "%s: length changed between calls (%zu then %zu)", what, n, n2);
    CHECK(strlen(buf) == n, "%s: strlen %zu != returned length %zu", what, strlen(buf), n);
    return buf;
}

/* Check export_files_json: one entry per file_index, and per-file counts (when present) equal
 * the records seen. Returns the number of files listed. */
static size_t check_files_json(const FhirbulkExport *h, const Tally *t) {
    char *files = fetch_text(h, export_files_json, "export_files_json");
    CHECK(files[0] == '[', "files JSON is not an array: %.200s", files);
    size_t listed = 0;
    const char *p = files;
    while ((p = strchr(p, '{')) != NULL) {
        const char *end = strchr(p, '}');
        CHECK(end != NULL, "unterminated object in files JSON");
        const char *ix = strstr(p, "\"index\":");
        CHECK(ix != NULL && ix < end, "file entry without index: %.*s", (int)(end - p + 1), p);
        long index = strtol(ix + strlen("\"index\":"), NULL, 10);
        CHECK(index == (long)listed, "files not in index order: entry %zu has index %ld", listed,
              index);
        const char *cnt = strstr(p, "\"count\":");
        if (cnt != NULL && cnt < end && (size_t)index < t->nfiles) {
            long count = strtol(cnt + strlen("\"count\":"), NULL, 10);
            CHECK(count == t->per_file[index],
                  "file %ld: files JSON says count %ld, records delivered %ld", index, count,
                  t->per_file[index]);
        }
        listed++;
        p = end + 1;
    }
    CHECK(t->nfiles <= listed, "a record had file_index %zu but only %zu files are listed",
          t->nfiles - 1, listed);
    free(files);
    return listed;
}

static void check_done(const FhirbulkExport *h, const Tally *t, size_t files_listed) {
    FhirbulkProgress p;
    memset(&p, 0xAB, sizeof p);
    CHECK_STATUS(export_poll(h, &p), FHIRBULK_OK);
    CHECK(p.state == FHIRBULK_STATE_DONE, "state %u (%s) after END, expected DONE", p.state,
          state_name(p.state));
    CHECK(p.error == 0 && p.http_status == 0, "error %d / http %u on a successful export",
          (int)p.error, p.http_status);
    CHECK(p.records_delivered == (uint64_t)t->total,
          "records_delivered %" PRIu64 " != records pulled %ld", p.records_delivered, t->total);
    CHECK(p.files_total == files_listed, "files_total %u != files listed %zu", p.files_total,
          files_listed);
    CHECK(p.files_done == p.files_total, "files_done %u != files_total %u", p.files_done,
          p.files_total);
    CHECK(p.bytes_downloaded >= t->payload_bytes,
          "bytes_downloaded %" PRIu64 " < record payload %" PRIu64, p.bytes_downloaded,
          t->payload_bytes);
    CHECK(p.polls >= 1, "no status polls counted");
    CHECK(memchr(p.server_progress, '\0', sizeof p.server_progress) != NULL,
          "server_progress not NUL-terminated");
}

static void check_counts(const Tally *t, const char *truth, const char *types, const char *what) {
    char list[512];
    snprintf(list, sizeof list, "%s", types);
    long expected_total = 0;
    for (char *save = NULL, *ty = strtok_r(list, ",", &save); ty; ty = strtok_r(NULL, ",", &save)) {
        long want = truth_count(truth, ty);
        CHECK(want >= 0, "truth has no count for %s: %s", ty, truth);
        long got = type_count(t, ty);
        CHECK(got == want, "%s: %s records %ld, truth says %ld", what, ty, got, want);
        expected_total += want;
    }
    long outputs = t->total - t->error_records;
    CHECK(outputs == expected_total, "%s: %ld output records, truth total %ld (unrequested types?)",
          what, outputs, expected_total);
}

static void build_types_json(const char *types, char *out, size_t out_len) {
    char list[512];
    snprintf(list, sizeof list, "%s", types);
    size_t used = (size_t)snprintf(out, out_len, "[");
    int first = 1;
    for (char *save = NULL, *ty = strtok_r(list, ",", &save); ty; ty = strtok_r(NULL, ",", &save)) {
        used += (size_t)snprintf(out + used, out_len - used, "%s\"%s\"", first ? "" : ",", ty);
        first = 0;
        CHECK(used < out_len, "types list too long");
    }
    snprintf(out + used, out_len - used, "]");
}

#define CONFIG_FMT                                                                               \
    "{\"base_url\": \"%s%s\", \"level\": \"group\", \"group_id\": \"g1\", \"types\": %s, "     \
    "\"concurrency\": 4, \"poll_min_ms\": 10, \"poll_max_ms\": 200}"

/* Pass 1: export_next_record. */
static void run_records(const char *root, const char *truth, const char *types,
                        const char *types_json, Tally *t) {
    FhirbulkExport *h = start_export(CONFIG_FMT, root, "/fhir", types_json);
    FhirbulkRecord rec;
    FhirbulkStatus s;
    while ((s = export_next_record(h, -1, &rec)) == FHIRBULK_RECORD) {
        CHECK(rec.kind == FHIRBULK_KIND_OUTPUT, "kind %u in an export without errors", rec.kind);
        tally_record(t, &rec);
    }
    if (s != FHIRBULK_END) {
        char detail[4096];
        export_last_error_json(h, detail, sizeof detail);
        FAIL("export_next_record returned %d (%s): %s", (int)s, fhirbulk_status_name(s), detail);
    }
    /* END is sticky: pulling again after the end is not an error. */
    CHECK_STATUS(export_next_record(h, 0, &rec), FHIRBULK_END);

    check_counts(t, truth, types, "next_record");
    size_t files = check_files_json(h, t);
    CHECK(files > 1, "expected many files (small --records-per-file), got %zu", files);
    check_done(h, t, files);

    char *manifest = fetch_text(h, export_manifest, "export_manifest");
    size_t mlen = strlen(manifest);
    CHECK(mlen > 2 && manifest[0] == '{' && manifest[mlen - 1] == '}',
          "manifest is not a JSON object: %.200s", manifest);
    CHECK(strstr(manifest, "\"transactionTime\"") != NULL && strstr(manifest, "\"output\"") != NULL,
          "manifest lacks transactionTime/output: %.300s", manifest);
    free(manifest);

    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  next_record: %ld records in %zu files, %zu types\n", t->total, files, t->ntypes);
}

/* Pass 2: export_next_batch(h, 1000, ...), checking data/data_len against the record views. */
static void run_batches(const char *root, const char *truth, const char *types,
                        const char *types_json, const Tally *first) {
    Tally t;
    memset(&t, 0, sizeof t);
    FhirbulkExport *h = start_export(CONFIG_FMT, root, "/fhir", types_json);
    FhirbulkBatch b;
    FhirbulkStatus s;
    long batches = 0;
    while ((s = export_next_batch(h, 1000, -1, &b)) == FHIRBULK_RECORD) {
        batches++;
        CHECK(b.count >= 1 && b.count <= 1000, "batch count %zu outside 1..1000", b.count);
        CHECK(b.records != NULL && b.data != NULL, "batch with NULL records/data");
        size_t off = 0;
        for (size_t i = 0; i < b.count; i++) {
            const FhirbulkRecord *r = &b.records[i];
            CHECK(r->file_index == b.records[0].file_index,
                  "batch mixes files %u and %u", b.records[0].file_index, r->file_index);
            tally_record(&t, r);
            CHECK(off + r->len + 1 <= b.data_len, "records overrun data_len %zu", b.data_len);
            CHECK(memcmp(b.data + off, r->data, r->len) == 0,
                  "batch record %zu differs from data at offset %zu", i, off);
            CHECK(b.data[off + r->len] == '\n', "batch record %zu not followed by '\\n'", i);
            off += r->len + 1;
        }
        CHECK(off == b.data_len, "data_len %zu != sum of (len + 1) %zu", b.data_len, off);
    }
    if (s != FHIRBULK_END) {
        char detail[4096];
        export_last_error_json(h, detail, sizeof detail);
        FAIL("export_next_batch returned %d (%s): %s", (int)s, fhirbulk_status_name(s), detail);
    }
    check_counts(&t, truth, types, "next_batch");
    CHECK(t.total == first->total, "batch pass %ld records, record pass %ld", t.total,
          first->total);
    for (size_t i = 0; i < first->ntypes; i++) {
        CHECK(type_count(&t, first->types[i].name) == first->types[i].count,
              "%s: batch pass %ld, record pass %ld", first->types[i].name,
              type_count(&t, first->types[i].name), first->types[i].count);
    }
    size_t files = check_files_json(h, &t);
    check_done(h, &t, files);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  next_batch: %ld records in %ld batches\n", t.total, batches);
    tally_free(&t);
}

/* Pass 3: gzip-compressed files plus error files (OperationOutcome records of kind ERROR). */
static void run_gzip_errors(const char *root, const char *truth, const char *types,
                            const char *types_json) {
    Tally t;
    memset(&t, 0, sizeof t);
    FhirbulkExport *h = start_export(CONFIG_FMT, root, "/x/gzip;errors/fhir", types_json);
    FhirbulkRecord rec;
    FhirbulkStatus s;
    while ((s = export_next_record(h, -1, &rec)) == FHIRBULK_RECORD) {
        if (rec.kind == FHIRBULK_KIND_ERROR) {
            CHECK(strcmp(rec.resource_type, "OperationOutcome") == 0,
                  "error record of type %s", rec.resource_type);
        }
        tally_record(&t, &rec);
    }
    if (s != FHIRBULK_END) {
        char detail[4096];
        export_last_error_json(h, detail, sizeof detail);
        FAIL("gzip;errors export returned %d (%s): %s", (int)s, fhirbulk_status_name(s), detail);
    }
    check_counts(&t, truth, types, "gzip;errors");
    CHECK(t.error_records > 0, "the errors scenario delivered no KIND_ERROR records");
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  gzip;errors: %ld output + %ld error records\n", t.total - t.error_records,
           t.error_records);
    tally_free(&t);
}

int main(int argc, char **argv) {
    test_begin("test_full_export", 240);
    if (argc != 4) {
        fprintf(stderr, "usage: %s SERVER_ROOT TRUTH_JSON TYPES\n", argv[0]);
        return 2;
    }
    const char *root = argv[1], *truth = argv[2], *types = argv[3];
    char types_json[1024];
    build_types_json(types, types_json, sizeof types_json);

    Tally first;
    memset(&first, 0, sizeof first);
    run_records(root, truth, types, types_json, &first);
    run_batches(root, truth, types, types_json, &first);
    run_gzip_errors(root, truth, types, types_json);
    tally_free(&first);
    return test_finish();
}
