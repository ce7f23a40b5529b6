/*
 * test_errors: failures are reported with the right status, state and detail.
 *   - an unknown Group -> FHIRBULK_ERR_NOT_FOUND with the server's OperationOutcome
 *   - kick-off 422 / 429 / 500 and a failed job -> UNPROCESSABLE / THROTTLED / SERVER
 *   - invalid configs -> FHIRBULK_ERR_CONFIG from export_start, the message naming the key
 *   - export_last_error* follow snprintf semantics
 *   - warnings (a manifest listing a file twice) and long waits (Retry-After: 3) show in
 *     export_poll and export_warnings_json
 *
 * usage: test_errors SERVER_ROOT      (http://127.0.0.1:PORT of a running sandbox)
 */
#include "test_util.h"

#define FAST "\"poll_min_ms\": 10, \"poll_max_ms\": 200, \"retry_max_attempts\": 2, \"retry_backoff_min_ms\": 10"

/* Pull until the export ends; return the final status. */
static FhirbulkStatus drain(FhirbulkExport *h) {
    FhirbulkRecord rec;
    FhirbulkStatus s;
    while ((s = export_next_record(h, -1, &rec)) == FHIRBULK_RECORD) {
    }
    return s;
}

static void check_failed_progress(FhirbulkExport *h, FhirbulkStatus code, uint32_t http) {
    FhirbulkProgress p;
    memset(&p, 0, sizeof p);
    CHECK_STATUS(export_poll(h, &p), FHIRBULK_OK);
    CHECK(p.state == FHIRBULK_STATE_FAILED, "state %u (%s), expected FAILED", p.state,
          state_name(p.state));
    CHECK(p.error == code, "progress.error %d (%s), expected %d (%s)", (int)p.error,
          fhirbulk_status_name(p.error), (int)code, fhirbulk_status_name(code));
    CHECK(p.http_status == http, "progress.http_status %u, expected %u", p.http_status, http);
}

static void unknown_group(const char *root) {
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/fhir\", \"level\": \"group\", \"group_id\": \"no-such-group\", " FAST
        "}",
        root);
    CHECK_STATUS(drain(h), FHIRBULK_ERR_NOT_FOUND);
    check_failed_progress(h, FHIRBULK_ERR_NOT_FOUND, 404);
    /* The failure is sticky: pulling again gives the same error. */
    FhirbulkRecord rec;
    CHECK_STATUS(export_next_record(h, 0, &rec), FHIRBULK_ERR_NOT_FOUND);

    char msg[1024];
    size_t n = export_last_error(h, msg, sizeof msg);
    CHECK(n > 0 && strlen(msg) > 0, "empty last_error after a failure");
    CHECK(n == strlen(msg) || n >= sizeof msg, "last_error returned %zu for a %zu-char message", n,
          strlen(msg));

    char json[8192];
    n = export_last_error_json(h, json, sizeof json);
    CHECK(n > 0 && n < sizeof json, "last_error_json length %zu", n);
    CHECK(json[0] == '{' && json[n - 1] == '}', "not a JSON object: %s", json);
    CHECK(strstr(json, "\"code\":303") != NULL, "no \"code\":303 in %s", json);
    CHECK(strstr(json, "\"not_found\"") != NULL, "no name not_found in %s", json);
    CHECK(strstr(json, "\"http_status\":404") != NULL, "no \"http_status\":404 in %s", json);
    CHECK(strstr(json, "not-found") != NULL, "no OperationOutcome issue code not-found in %s",
          json);
    CHECK(strstr(json, "no-such-group") != NULL, "URL of the failed request missing in %s", json);

    /* snprintf semantics on the handle's JSON: small buffer -> truncated, NUL-terminated, full
     * length returned, the prefix matching. */
    char small[16];
    memset(small, 'X', sizeof small);
    size_t n2 = export_last_error_json(h, small, sizeof small);
    CHECK(n2 == n, "truncated call returned %zu, full length is %zu", n2, n);
    CHECK(small[sizeof small - 1] == '\0', "truncated output not NUL-terminated");
    CHECK(strncmp(small, json, sizeof small - 1) == 0, "truncated output is not a prefix");

    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  unknown group: %s\n", msg);
}

static void scenario_error(const char *root, const char *scenario, FhirbulkStatus code,
                           uint32_t http) {
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/x/%s/fhir\", \"level\": \"group\", \"group_id\": \"g1\", "
        "\"types\": [\"Patient\"], " FAST "}",
        root, scenario);
    FhirbulkStatus s = drain(h);
    if (s != code) {
        char json[4096];
        export_last_error_json(h, json, sizeof json);
        FAIL("scenario %s: got %d (%s), expected %d (%s); detail %s", scenario, (int)s,
             fhirbulk_status_name(s), (int)code, fhirbulk_status_name(code), json);
    }
    check_failed_progress(h, code, http);
    char json[4096];
    export_last_error_json(h, json, sizeof json);
    char want[32];
    snprintf(want, sizeof want, "\"code\":%d", (int)code);
    CHECK(strstr(json, want) != NULL, "scenario %s: %s missing in %s", scenario, want, json);
    CHECK(strstr(json, "\"issues\"") != NULL, "scenario %s: no OperationOutcome issues in %s",
          scenario, json);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  %-12s -> %s\n", scenario, fhirbulk_status_name(code));
}

/* export_start must refuse `config` with FHIRBULK_ERR_CONFIG, leave *out_handle alone, and
 * name `key` in export_last_error(NULL, ...). */
static void bad_config(const char *config, const char *key) {
    int sentinel;
    FhirbulkExport *h = (FhirbulkExport *)&sentinel;
    CHECK_STATUS(export_start(config, &h), FHIRBULK_ERR_CONFIG);
    CHECK(h == (FhirbulkExport *)&sentinel, "export_start wrote *out_handle on failure");
    /* An unknown key's message lists every key (over 1 KB). */
    char msg[4096];
    size_t n = export_last_error(NULL, msg, sizeof msg);
    CHECK(n > 0 && n == strlen(msg), "export_last_error(NULL) returned %zu for \"%s\"", n, msg);
    if (key != NULL) {
        SOFT_CHECK(strstr(msg, key) != NULL, "message for %s does not name \"%s\": %s", config,
                   key, msg);
    }
    char json[8192];
    export_last_error_json(NULL, json, sizeof json);
    CHECK(strstr(json, "\"code\":103") != NULL, "last_error_json(NULL) lacks code 103: %s", json);
}

static void config_errors(const char *root) {
    bad_config("{not json", NULL);
    bad_config("", NULL);
    bad_config("[1, 2]", NULL);
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"base_url\": \"%s/fhir\", \"bogus_key\": 1}", root);
    bad_config(cfg, "bogus_key");
    bad_config("{\"level\": \"system\"}", "base_url");
    snprintf(cfg, sizeof cfg, "{\"base_url\": \"%s/fhir\", \"level\": \"planet\"}", root);
    bad_config(cfg, "level");
    snprintf(cfg, sizeof cfg, "{\"base_url\": \"%s/fhir\", \"level\": \"group\"}", root);
    bad_config(cfg, "group_id");
    snprintf(cfg, sizeof cfg, "{\"base_url\": \"%s/fhir\", \"concurrency\": 0}", root);
    bad_config(cfg, "concurrency");
    snprintf(cfg, sizeof cfg, "{\"base_url\": \"%s/fhir\", \"concurrency\": \"4\"}", root);
    bad_config(cfg, "concurrency");
    snprintf(cfg, sizeof cfg, "{\"base_url\": \"%s/fhir\", \"types\": \"Patient\"}", root);
    bad_config(cfg, "types");
    snprintf(cfg, sizeof cfg, "{\"base_url\": \"%s/fhir\", \"since\": \"yesterday\"}", root);
    bad_config(cfg, "since");
    bad_config("{\"base_url\": \"ftp://example.org/fhir\"}", "base_url");

    /* snprintf semantics of export_last_error(NULL, ...) on the last config error. */
    char full[1024];
    size_t n = export_last_error(NULL, full, sizeof full);
    CHECK(n > 8 && n < sizeof full, "message length %zu", n);
    CHECK(export_last_error(NULL, NULL, 0) == n, "length query (NULL, 0) differs");
    char small[8];
    memset(small, 'X', sizeof small);
    CHECK(export_last_error(NULL, small, sizeof small) == n, "truncated call must return %zu", n);
    CHECK(small[7] == '\0', "truncated message not NUL-terminated");
    CHECK(strncmp(small, full, 7) == 0, "truncated message is not a prefix of \"%s\"", full);
    char one[1] = {'X'};
    CHECK(export_last_error(NULL, one, 1) == n && one[0] == '\0', "buf_len 1 must give \"\"");
    char zero[1] = {'X'};
    CHECK(export_last_error(NULL, zero, 0) == n && zero[0] == 'X', "buf_len 0 must write nothing");
    char exact[1024];
    CHECK(export_last_error(NULL, exact, n + 1) == n && strcmp(exact, full) == 0,
          "buf_len n+1 must hold the whole message");
    printf("  config errors ok; last: %s\n", full);
}

static void warnings_and_waits(const char *root) {
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/x/polls=0;dup_entry;file_error=429:1;error_retry_after=3/fhir\", "
        "\"level\": \"group\", \"group_id\": \"g1\", \"types\": [\"Patient\"], "
        "\"poll_max_ms\": 10000}",
        root);
    FhirbulkProgress p;
    int waited = 0;
    for (int i = 0; i < 500 && !waited; i++) {
        memset(&p, 0, sizeof p);
        CHECK_STATUS(export_poll(h, &p), FHIRBULK_OK);
        if (p.wait_until_ms != 0) {
            waited = 1;
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            long long left = p.wait_until_ms - ((long long)now.tv_sec * 1000 + now.tv_nsec / 1000000);
            CHECK(left > -1000 && left <= 3500, "wait ends in %lld ms", left);
            CHECK(strstr(p.wait_reason, "429") != NULL, "wait_reason: %s", p.wait_reason);
        } else {
            struct timespec d = {0, 20 * 1000000};
            nanosleep(&d, NULL);
        }
    }
    CHECK(waited, "a wait of 3 s shows in export_poll");
    CHECK_STATUS(drain(h), FHIRBULK_END);
    CHECK_STATUS(export_poll(h, &p), FHIRBULK_OK);
    CHECK(p.wait_until_ms == 0 && p.wait_reason[0] == '\0', "no wait after the end");
    CHECK(p.warnings >= 1, "warnings %u", p.warnings);
    char json[8192];
    size_t n = export_warnings_json(h, json, sizeof json);
    CHECK(n > 2 && n < sizeof json && json[0] == '[', "warnings JSON: %s", json);
    CHECK(strstr(json, "more than once") != NULL, "the duplicate entry is named: %s", json);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  warnings and waits ok\n");
}

int main(int argc, char **argv) {
    test_begin("test_errors", 120);
    if (argc != 2) {
        fprintf(stderr, "usage: %s SERVER_ROOT\n", argv[0]);
        return 2;
    }
    const char *root = argv[1];
    config_errors(root);
    unknown_group(root);
    scenario_error(root, "kickoff=422", FHIRBULK_ERR_UNPROCESSABLE, 422);
    scenario_error(root, "kickoff=429", FHIRBULK_ERR_THROTTLED, 429);
    scenario_error(root, "kickoff=500", FHIRBULK_ERR_SERVER, 500);
    scenario_error(root, "poll=500", FHIRBULK_ERR_SERVER, 500);
    warnings_and_waits(root);
    return test_finish();
}
