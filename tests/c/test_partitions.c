/*
 * test_partitions: reading given files of an existing export through the C ABI, as a
 * distributed reader does. A driver export waits for the whole manifest, takes the checkpoint
 * (before pulling any record) and the file list, and is cancelled without a DELETE; then one
 * export per file resumes them with "only_files": [k]. Every record of such an export comes
 * from file k, and the per-type counts of all of them equal the sandbox's truth. A config that
 * names a file the checkpoint does not count is refused with FHIRBULK_ERR_CONFIG.
 *
 * usage: test_partitions SERVER_ROOT TRUTH_JSON TYPES_JSON
 */
#include "test_util.h"

#define MAX_TYPES 16

static char g_names[MAX_TYPES][64];
static long g_counts[MAX_TYPES];
static size_t g_ntypes;

static void count_type(const char *name) {
    for (size_t i = 0; i < g_ntypes; i++) {
        if (strcmp(g_names[i], name) == 0) {
            g_counts[i]++;
            return;
        }
    }
    CHECK(g_ntypes < MAX_TYPES && strlen(name) < sizeof g_names[0], "type %s", name);
    strcpy(g_names[g_ntypes], name);
    g_counts[g_ntypes++] = 1;
}

/* A text from an snprintf-style getter, in a buffer of its own size (free it). The export
 * goes on meanwhile, so the text may grow between two calls: then again, with more room. */
static char *text_of(const FhirbulkExport *h,
                     size_t (*get)(const FhirbulkExport *, char *, size_t)) {
    size_t n = get(h, NULL, 0);
    CHECK(n > 0, "an empty text");
    for (;;) {
        char *buf = malloc(n + 1);
        CHECK(buf != NULL, "out of memory");
        size_t m = get(h, buf, n + 1);
        if (m <= n) return buf;
        free(buf);
        n = m;
    }
}

static size_t count_files(const char *files_json) {
    size_t n = 0;
    for (const char *p = files_json; (p = strstr(p, "\"index\":")) != NULL; p++) n++;
    return n;
}

/* Start an export whose config is printf-formatted into a buffer of any size. */
static FhirbulkStatus start_big(FhirbulkExport **out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    CHECK(n > 0, "config");
    char *cfg = malloc((size_t)n + 1);
    CHECK(cfg != NULL, "out of memory");
    va_start(ap, fmt);
    vsnprintf(cfg, (size_t)n + 1, fmt, ap);
    va_end(ap);
    FhirbulkStatus s = export_start(cfg, out);
    free(cfg);
    return s;
}

#define TASK_FMT                                                                                 \
    "{\"base_url\": \"%s/fhir\", \"level\": \"group\", \"group_id\": \"g1\", \"types\": %s, "  \
    "\"poll_min_ms\": 10, \"poll_max_ms\": 200, \"delete_on_cancel\": false, "                 \
    "\"resume\": %s, \"resume_files\": %s, \"only_files\": [%zu]}"

int main(int argc, char **argv) {
    test_begin("test_partitions", 120);
    if (argc != 4) FAIL("usage: test_partitions SERVER_ROOT TRUTH_JSON TYPES_JSON");
    const char *root = argv[1], *truth = argv[2], *types_json = argv[3];

    /* The driver: manifest_only ends the export once the whole manifest arrived, with no
     * record and no file fetched; its checkpoint and file list are what the tasks resume. */
    FhirbulkExport *d = start_export(
        "{\"base_url\": \"%s/fhir\", \"level\": \"group\", \"group_id\": \"g1\", \"types\": %s, "
        "\"poll_min_ms\": 10, \"poll_max_ms\": 200, \"manifest_only\": true}",
        root, types_json);
    FhirbulkRecord none;
    FhirbulkStatus ds = export_next_record(d, 30000, &none);
    CHECK(ds == FHIRBULK_END, "the driver: %s (no record, then the end): %s",
          fhirbulk_status_name(ds), last_error_of(d));
    FhirbulkProgress dp;
    CHECK_STATUS(export_poll(d, &dp), FHIRBULK_OK);
    CHECK(dp.state == FHIRBULK_STATE_DONE && dp.bytes_downloaded == 0,
          "the driver: state %d, %llu bytes downloaded", (int)dp.state,
          (unsigned long long)dp.bytes_downloaded);
    char *cp = text_of(d, export_checkpoint);
    CHECK(strstr(cp, "\"manifest_complete\":true") != NULL, "checkpoint: %s", cp);
    char *files = text_of(d, export_files_json);
    size_t n = count_files(files);
    CHECK(n >= 2, "an export of several files: %zu", n);
    CHECK_STATUS(export_free(d), FHIRBULK_OK);

    /* One export per file, the last first. */
    for (size_t k = n; k-- > 0;) {
        FhirbulkExport *h = NULL;
        FhirbulkStatus s = start_big(&h, TASK_FMT, root, types_json, cp, files, k);
        CHECK(s == FHIRBULK_OK, "task %zu: %s", k, last_error_of(NULL));
        FhirbulkRecord rec;
        for (;;) {
            s = export_next_record(h, 30000, &rec);
            if (s == FHIRBULK_END) break;
            CHECK(s == FHIRBULK_RECORD, "task %zu: %s: %s", k, fhirbulk_status_name(s),
                  last_error_of(h));
            CHECK(rec.file_index == k, "a record of file %u in the task of file %zu",
                  rec.file_index, k);
            if (rec.kind == FHIRBULK_KIND_OUTPUT) count_type(rec.resource_type);
        }
        CHECK_STATUS(export_free(h), FHIRBULK_OK);
    }
    long total = 0;
    for (size_t i = 0; i < g_ntypes; i++) {
        CHECK(g_counts[i] == truth_count(truth, g_names[i]), "%s: %ld records, truth %ld",
              g_names[i], g_counts[i], truth_count(truth, g_names[i]));
        total += g_counts[i];
    }
    CHECK(total == truth_total(truth), "%ld records, truth %ld", total, truth_total(truth));

    /* A file the checkpoint does not count. */
    FhirbulkExport *h = NULL;
    FhirbulkStatus s = start_big(&h, TASK_FMT, root, types_json, cp, files, n);
    CHECK(s == FHIRBULK_ERR_CONFIG && h == NULL, "only_files [%zu]: %s", n,
          fhirbulk_status_name(s));
    CHECK(strstr(last_error_of(NULL), "only_files names file") != NULL, "%s",
          last_error_of(NULL));

    free(cp);
    free(files);
    return test_finish();
}
