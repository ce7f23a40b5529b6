/*
 * test_native: what a C integration engine uses besides the record pull.
 *   - events: export_next_event gives the export's events in order (kickoff first, a
 *     file_started and a file_completed per file, completed last, then FHIRBULK_END); a buffer
 *     too small keeps the event queued and says its length; another thread can read them
 *     while the records are pulled
 *   - structured errors: code, HTTP status, URL and OperationOutcome issues of a failure as
 *     plain calls, for a handle and (config errors) for the thread
 *   - a config built with fhirbulk_config_set/add (no JSON written by the caller) runs an
 *     export that delivers the sandbox's truth; wrong keys and values are errors naming them
 *
 * usage: test_native SERVER_ROOT TRUTH_JSON      (truth of group g1, Patient + Observation)
 */
#include "test_util.h"

#include <pthread.h>

#define FAST "\"poll_min_ms\": 10, \"poll_max_ms\": 200, \"retry_backoff_min_ms\": 10"

static size_t count_of(const char *haystack, const char *needle) {
    size_t n = 0;
    for (const char *p = haystack; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

static long drain_records(FhirbulkExport *h) {
    FhirbulkRecord rec;
    FhirbulkStatus s;
    long n = 0;
    while ((s = export_next_record(h, 30000, &rec)) == FHIRBULK_RECORD) {
        if (rec.kind == FHIRBULK_KIND_OUTPUT) n++;
    }
    CHECK_STATUS(s, FHIRBULK_END);
    return n;
}

struct reader {
    FhirbulkExport *h;
    char *log; /* every event, one per line */
    size_t len, cap;
    int events;
    FhirbulkStatus end;
};

static void *read_events(void *arg) {
    struct reader *r = arg;
    char buf[4096];
    size_t n = 0;
    FhirbulkStatus s;
    while ((s = export_next_event(r->h, 30000, buf, sizeof buf, &n)) == FHIRBULK_RECORD) {
        if (r->len + n + 2 > r->cap) {
            r->cap = (r->cap + n + 2) * 2;
            r->log = realloc(r->log, r->cap);
            if (r->log == NULL) abort();
        }
        memcpy(r->log + r->len, buf, n);
        r->len += n;
        r->log[r->len++] = '\n';
        r->log[r->len] = '\0';
        r->events++;
    }
    r->end = s;
    return NULL;
}

static void events(const char *root, const char *truth) {
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/x/polls=2/fhir\", \"level\": \"group\", \"group_id\": \"g1\", "
        "\"types\": [\"Patient\", \"Observation\"], \"event_queue_size\": 100000, " FAST "}",
        root);

    /* The first event, asked for with a buffer too small: it stays, and its length is told. */
    char tiny[8];
    size_t need = 0;
    FhirbulkStatus s = export_next_event(h, 30000, tiny, sizeof tiny, &need);
    CHECK_STATUS(s, FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK(need > sizeof tiny, "the length of the event: %zu", need);
    char *first = malloc(need + 1);
    CHECK(first != NULL, "out of memory");
    size_t got = 0;
    CHECK_STATUS(export_next_event(h, 0, first, need + 1, &got), FHIRBULK_RECORD);
    CHECK(got == need && strlen(first) == need, "the same event: %zu, %zu", got, need);
    CHECK(strstr(first, "\"seq\":1,") != NULL && strstr(first, "\"type\":\"kickoff\"") != NULL,
          "the first event is the kick-off: %s", first);
    CHECK(strstr(first, "\"status_url\":\"http") != NULL, "its status URL: %s", first);
    free(first);

    /* The rest on another thread while this one pulls the records. */
    struct reader r = {.h = h};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, read_events, &r) == 0, "pthread_create");
    long records = drain_records(h);
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    CHECK_STATUS(r.end, FHIRBULK_END);
    CHECK(records == truth_total(truth), "records %ld, truth %ld", records, truth_total(truth));

    char files[65536];
    size_t flen = export_files_json(h, files, sizeof files);
    CHECK(flen < sizeof files, "files JSON fits");
    size_t nfiles = count_of(files, "\"index\":");
    CHECK(nfiles > 1, "files %zu", nfiles);
    CHECK(count_of(r.log, "\"type\":\"status\"") == 2, "two status events:\n%s", r.log);
    CHECK(count_of(r.log, "\"type\":\"manifest\"") == 1, "one manifest event:\n%s", r.log);
    CHECK(count_of(r.log, "\"type\":\"file_started\"") == nfiles, "a start per file:\n%s", r.log);
    CHECK(count_of(r.log, "\"type\":\"file_completed\"") == nfiles, "an end per file:\n%s", r.log);
    CHECK(count_of(r.log, "\"type\":\"completed\"") == 1, "one completed:\n%s", r.log);
    /* completed is the last line. */
    const char *last = r.log + r.len - 1;
    while (last > r.log && last[-1] != '\n') last--;
    CHECK(strstr(last, "\"type\":\"completed\"") != NULL, "the last event: %s", last);
    char seq[32];
    snprintf(seq, sizeof seq, "\"seq\":%d,", r.events + 1);
    CHECK(strstr(last, seq) != NULL, "no gap in seq (%s): %s", seq, last);
    CHECK(export_events_dropped(h) == 0, "dropped %llu",
          (unsigned long long)export_events_dropped(h));

    /* After the end: END at once, even with a long timeout. */
    char buf[256];
    double t0 = now_seconds();
    CHECK_STATUS(export_next_event(h, 10000, buf, sizeof buf, &got), FHIRBULK_END);
    CHECK(now_seconds() - t0 < 5, "END did not wait");
    CHECK(got == 0, "no length at the end");
    /* A NULL buffer is a misuse, a bad handle is a bad handle. */
    CHECK_STATUS(export_next_event(h, 0, NULL, 0, &got), FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(export_next_event((FhirbulkExport *)0x1234, 0, buf, sizeof buf, &got),
                 FHIRBULK_ERR_INVALID_HANDLE);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    free(r.log);
    printf("  events: %d after the kick-off, %zu files\n", r.events, nfiles);
}

static void structured_errors(const char *root) {
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/fhir\", \"level\": \"group\", \"group_id\": \"no-such-group\", " FAST
        "}",
        root);
    FhirbulkRecord rec;
    CHECK_STATUS(export_next_record(h, 30000, &rec), FHIRBULK_ERR_NOT_FOUND);
    CHECK_STATUS(export_error_code(h), FHIRBULK_ERR_NOT_FOUND);
    CHECK(export_error_http_status(h) == 404, "http %u", export_error_http_status(h));
    char msg[1024], full[2048];
    export_error_message(h, msg, sizeof msg);
    export_last_error(h, full, sizeof full);
    CHECK(strstr(msg, "404") != NULL && strstr(msg, "(http") == NULL, "message alone: %s", msg);
    CHECK(strncmp(full, msg, strlen(msg)) == 0 && strstr(full, "(http") != NULL,
          "export_last_error is the message and the URL: %s", full);
    char url[1024];
    size_t n = export_error_url(h, url, sizeof url);
    CHECK(n > 0 && n < sizeof url && strstr(url, "/Group/no-such-group/$export") != NULL,
          "url %s", url);
    CHECK(strchr(url, '?') == NULL, "no query string in %s", url);
    size_t issues = export_error_issue_count(h);
    CHECK(issues >= 1, "issues %zu", issues);
    char sev[64], code[64], diag[1024];
    export_error_issue(h, 0, FHIRBULK_ISSUE_SEVERITY, sev, sizeof sev);
    export_error_issue(h, 0, FHIRBULK_ISSUE_CODE, code, sizeof code);
    export_error_issue(h, 0, FHIRBULK_ISSUE_DIAGNOSTICS, diag, sizeof diag);
    CHECK(strcmp(sev, "error") == 0, "severity %s", sev);
    CHECK(strcmp(code, "not-found") == 0, "code %s", code);
    CHECK(strstr(diag, "no-such-group") != NULL, "diagnostics %s", diag);
    printf("  structured errors: %d %u %s [%s %s] %s\n", (int)export_error_code(h),
           export_error_http_status(h), url, sev, code, diag);
    /* Out of range: empty, length 0. */
    CHECK(export_error_issue(h, issues, FHIRBULK_ISSUE_CODE, code, sizeof code) == 0 &&
              code[0] == '\0',
          "issue past the end: %s", code);
    CHECK(export_error_issue(h, 0, 99, code, sizeof code) == 0, "unknown field");
    CHECK_STATUS(export_free(h), FHIRBULK_OK);

    /* A config error, for the thread (NULL handle): no HTTP status, no URL, no issues. */
    FhirbulkExport *bad = NULL;
    CHECK_STATUS(export_start("{\"base_url\": \"http://127.0.0.1:1/fhir\", \"concurrency\": 0}",
                              &bad),
                 FHIRBULK_ERR_CONFIG);
    CHECK_STATUS(export_error_code(NULL), FHIRBULK_ERR_CONFIG);
    CHECK(export_error_http_status(NULL) == 0, "no HTTP status");
    CHECK(export_error_url(NULL, url, sizeof url) == 0, "no URL: %s", url);
    CHECK(export_error_issue_count(NULL) == 0, "no issues");
}

static void config_object(const char *root, const char *truth) {
    FhirbulkConfig *c = NULL;
    CHECK_STATUS(fhirbulk_config_new(&c), FHIRBULK_OK);
    char base[512];
    snprintf(base, sizeof base, "%s/fhir", root);
    CHECK_STATUS(fhirbulk_config_set(c, "base_url", base), FHIRBULK_OK);
    CHECK_STATUS(fhirbulk_config_set(c, "level", "group"), FHIRBULK_OK);
    CHECK_STATUS(fhirbulk_config_set(c, "group_id", "g1"), FHIRBULK_OK);
    CHECK_STATUS(fhirbulk_config_add(c, "types", "Patient"), FHIRBULK_OK);
    CHECK_STATUS(fhirbulk_config_add(c, "types", "Observation"), FHIRBULK_OK);
    CHECK_STATUS(fhirbulk_config_set(c, "concurrency", "3"), FHIRBULK_OK);
    CHECK_STATUS(fhirbulk_config_set(c, "poll_min_ms", "10"), FHIRBULK_OK);
    CHECK_STATUS(fhirbulk_config_set(c, "validate_json", "true"), FHIRBULK_OK);
    CHECK_STATUS(fhirbulk_config_set(c, "headers.X-Tenant", "a \"quoted\" value\\"), FHIRBULK_OK);

    /* Wrong keys and values: an error naming the key; the config keeps what it had. */
    CHECK_STATUS(fhirbulk_config_set(c, "concurency", "4"), FHIRBULK_ERR_CONFIG);
    const char *msg = last_error_of(NULL);
    CHECK(strcmp(msg, "invalid config: unknown key `concurency` (did you mean `concurrency`?)") ==
              0,
          "message: %s", msg);
    CHECK_STATUS(fhirbulk_config_set(c, "concurrency", "lots"), FHIRBULK_ERR_CONFIG);
    msg = last_error_of(NULL);
    CHECK(strncmp(msg, "invalid config: concurrency: ", 29) == 0 && strstr(msg, "line") == NULL,
          "message: %s", msg);
    CHECK_STATUS(fhirbulk_config_set(c, "validate_json", "maybe"), FHIRBULK_ERR_CONFIG);
    CHECK_STATUS(fhirbulk_config_set(c, NULL, "x"), FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(fhirbulk_config_set((FhirbulkConfig *)0x99, "level", "group"),
                 FHIRBULK_ERR_INVALID_HANDLE);

    FhirbulkExport *h = NULL;
    CHECK_STATUS(export_start_config(c, &h), FHIRBULK_OK);
    long records = drain_records(h);
    CHECK(records == truth_total(truth), "records %ld, truth %ld", records, truth_total(truth));
    CHECK_STATUS(export_free(h), FHIRBULK_OK);

    /* A rule between keys is checked at the start, like export_start does. */
    CHECK_STATUS(fhirbulk_config_set(c, "group_id", ""), FHIRBULK_OK);
    CHECK_STATUS(export_start_config(c, &h), FHIRBULK_ERR_CONFIG);
    msg = last_error_of(NULL);
    CHECK(strstr(msg, "group_id") != NULL, "names the key: %s", msg);

    CHECK_STATUS(fhirbulk_config_free(c), FHIRBULK_OK);
    CHECK_STATUS(fhirbulk_config_free(c), FHIRBULK_ERR_INVALID_HANDLE);
    CHECK_STATUS(fhirbulk_config_free(NULL), FHIRBULK_OK);
    CHECK_STATUS(export_start_config(c, &h), FHIRBULK_ERR_INVALID_HANDLE);
    printf("  config object: %ld records\n", records);
}

int main(int argc, char **argv) {
    test_begin("test_native", 240);
    if (argc < 3) FAIL("usage: test_native SERVER_ROOT TRUTH_JSON");
    events(argv[1], argv[2]);
    structured_errors(argv[1]);
    config_object(argv[1], argv[2]);
    return test_finish();
}
