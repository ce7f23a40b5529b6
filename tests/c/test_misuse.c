/*
 * test_misuse: the C ABI survives caller mistakes. NULL arguments, NULL / freed / made-up
 * handles and double frees give status codes, never crashes (under ASan and valgrind too).
 * Also: ABI version, version string and status names.
 *
 * usage: test_misuse SERVER_ROOT      (http://127.0.0.1:PORT of a running sandbox)
 */
#include "test_util.h"

/* Every handle-taking call on `h` must say FHIRBULK_ERR_INVALID_HANDLE. */
static void check_invalid_handle(FhirbulkExport *h, const char *what) {
    FhirbulkProgress p;
    FhirbulkRecord rec;
    FhirbulkBatch batch;
    memset(&p, 0x5A, sizeof p);
    FhirbulkProgress before = p;
    FhirbulkStatus s;

    s = export_poll(h, &p);
    CHECK(s == FHIRBULK_ERR_INVALID_HANDLE, "%s: export_poll returned %d (%s)", what, (int)s,
          fhirbulk_status_name(s));
    CHECK(memcmp(&p, &before, sizeof p) == 0, "%s: export_poll wrote *out on failure", what);
    s = export_next_record(h, 0, &rec);
    CHECK(s == FHIRBULK_ERR_INVALID_HANDLE, "%s: export_next_record returned %d (%s)", what,
          (int)s, fhirbulk_status_name(s));
    s = export_next_record(h, -1, &rec); /* must not block on a bad handle */
    CHECK(s == FHIRBULK_ERR_INVALID_HANDLE, "%s: export_next_record(-1) returned %d (%s)", what,
          (int)s, fhirbulk_status_name(s));
    s = export_next_batch(h, 10, 0, &batch);
    CHECK(s == FHIRBULK_ERR_INVALID_HANDLE, "%s: export_next_batch returned %d (%s)", what, (int)s,
          fhirbulk_status_name(s));
    s = export_cancel(h);
    CHECK(s == FHIRBULK_ERR_INVALID_HANDLE, "%s: export_cancel returned %d (%s)", what, (int)s,
          fhirbulk_status_name(s));

    /* The error is recorded for this thread. */
    char msg[512];
    CHECK(export_last_error(NULL, msg, sizeof msg) > 0, "%s: no thread error message", what);
    char json[1024];
    export_last_error_json(NULL, json, sizeof json);
    CHECK(strstr(json, "\"code\":101") != NULL, "%s: last_error_json(NULL) = %s", what, json);

    /* Text getters on a bad handle: nothing to report, no crash, the buffer is a valid string. */
    char buf[64];
    memset(buf, 'X', sizeof buf);
    size_t n = export_manifest(h, buf, sizeof buf);
    CHECK(n == 0 && buf[0] == '\0', "%s: export_manifest gave %zu bytes", what, n);
    memset(buf, 'X', sizeof buf);
    n = export_files_json(h, buf, sizeof buf);
    CHECK(n < sizeof buf && strlen(buf) == n, "%s: export_files_json inconsistent (%zu)", what, n);
    /* last_error with a bad handle falls back to the thread's error; just must not crash. */
    (void)export_last_error(h, buf, sizeof buf);
    (void)export_last_error_json(h, buf, sizeof buf);

    s = export_free(h);
    FhirbulkStatus want = h == NULL ? FHIRBULK_OK : FHIRBULK_ERR_INVALID_HANDLE; /* free(NULL) is OK */
    CHECK(s == want, "%s: export_free returned %d (%s)", what, (int)s, fhirbulk_status_name(s));
}

static void null_arguments(const char *root) {
    char cfg[512];
    snprintf(cfg, sizeof cfg,
             "{\"base_url\": \"%s/x/polls=1000/fhir\", \"level\": \"system\", "
             "\"poll_min_ms\": 50, \"poll_max_ms\": 100}",
             root);
    FhirbulkExport *h = NULL;
    CHECK_STATUS(export_start(NULL, &h), FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK(h == NULL, "export_start(NULL, &h) wrote a handle");
    CHECK_STATUS(export_start(cfg, NULL), FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(export_start(NULL, NULL), FHIRBULK_ERR_INVALID_ARGUMENT);
    char msg[256];
    CHECK(export_last_error(NULL, msg, sizeof msg) > 0, "no message for INVALID_ARGUMENT");

    /* A live handle with NULL outputs. */
    CHECK_STATUS(export_start(cfg, &h), FHIRBULK_OK);
    CHECK(h != NULL, "export_start returned OK without a handle");
    CHECK_STATUS(export_poll(h, NULL), FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(export_next_record(h, 0, NULL), FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(export_next_batch(h, 10, 0, NULL), FHIRBULK_ERR_INVALID_ARGUMENT);
    FhirbulkBatch batch;
    CHECK_STATUS(export_next_batch(h, 0, 0, &batch), FHIRBULK_ERR_INVALID_ARGUMENT);
    /* Misuse does not break the export: it still answers. */
    FhirbulkRecord rec;
    CHECK_STATUS(export_next_record(h, 0, &rec), FHIRBULK_TIMEOUT);
    FhirbulkProgress p;
    CHECK_STATUS(export_poll(h, &p), FHIRBULK_OK);
    CHECK(p.state == FHIRBULK_STATE_KICKING_OFF || p.state == FHIRBULK_STATE_WAITING,
          "state %s while the server keeps answering 202", state_name(p.state));
    /* Length queries with NULL buffers. */
    (void)export_manifest(h, NULL, 0);
    (void)export_files_json(h, NULL, 0);
    (void)export_last_error(h, NULL, 0);
    (void)export_last_error_json(h, NULL, 0);
    (void)export_last_error(NULL, NULL, 0);
    (void)export_last_error(NULL, NULL, 100); /* NULL buf with a length: still no write */

    /* Freed: every call says INVALID_HANDLE, including a second free. */
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    check_invalid_handle(h, "freed handle");

    /* A handle that was freed stays invalid after new exports start (ids are not reused). */
    FhirbulkExport *h2 = NULL;
    CHECK_STATUS(export_start(cfg, &h2), FHIRBULK_OK);
    FhirbulkStatus s = export_poll(h, &p);
    CHECK(s == FHIRBULK_ERR_INVALID_HANDLE,
          "freed handle %p became valid again after a new export_start (new %p): %d", (void *)h,
          (void *)h2, (int)s);
    CHECK_STATUS(export_poll(h2, &p), FHIRBULK_OK);
    CHECK_STATUS(export_free(h2), FHIRBULK_OK);
}

static void bogus_handles(void) {
    /* NULL */
    check_invalid_handle(NULL, "NULL handle");
    CHECK_STATUS(export_free(NULL), FHIRBULK_OK);
    CHECK_STATUS(export_free(NULL), FHIRBULK_OK);

    /* Made-up and foreign pointers. */
    check_invalid_handle((FhirbulkExport *)(uintptr_t)0x1234, "0x1234");
    check_invalid_handle((FhirbulkExport *)(uintptr_t)UINTPTR_MAX, "UINTPTR_MAX");
    uint64_t on_stack[8];
    memset(on_stack, 0x41, sizeof on_stack);
    check_invalid_handle((FhirbulkExport *)on_stack, "stack pointer");
    void *heap = malloc(64);
    CHECK(heap != NULL, "malloc");
    memset(heap, 0, 64);
    check_invalid_handle((FhirbulkExport *)heap, "heap pointer");
    free(heap);
}

static void versions_and_names(void) {
    CHECK(fhirbulk_abi_version() == FHIRBULK_ABI_VERSION, "library ABI %u, header ABI %u",
          fhirbulk_abi_version(), (unsigned)FHIRBULK_ABI_VERSION);
    const char *v = fhirbulk_version();
    CHECK(v != NULL && v[0] != '\0', "empty version");
#ifdef FHIRBULK_VERSION
    CHECK(strcmp(v, FHIRBULK_VERSION) == 0, "library %s, header %s", v, FHIRBULK_VERSION);
#endif
    CHECK(fhirbulk_version_num() == FHIRBULK_VERSION_NUM, "library %u, header %u",
          fhirbulk_version_num(), (unsigned)FHIRBULK_VERSION_NUM);
    CHECK(FHIRBULK_VERSION_NUM ==
              FHIRBULK_VERSION_MAJOR * 10000 + FHIRBULK_VERSION_MINOR * 100 + FHIRBULK_VERSION_PATCH,
          "FHIRBULK_VERSION_NUM %u", (unsigned)FHIRBULK_VERSION_NUM);
    CHECK(FHIRBULK_VERSION_COMPATIBLE(), "the library %s serves this header %s", v,
          FHIRBULK_VERSION);
    {
        char text[32];
        snprintf(text, sizeof text, "%d.%d.%d", FHIRBULK_VERSION_MAJOR, FHIRBULK_VERSION_MINOR,
                 FHIRBULK_VERSION_PATCH);
        CHECK(strcmp(text, v) == 0, "the macros say %s, the library %s", text, v);
    }

    static const struct {
        FhirbulkStatus code;
        const char *name; /* NULL: only check it is a distinct, known name */
    } codes[] = {
        {FHIRBULK_OK, "ok"},
        {FHIRBULK_RECORD, "record"},
        {FHIRBULK_END, "end"},
        {FHIRBULK_TIMEOUT, "timeout"},
        {FHIRBULK_CANCELLED, "cancelled"},
        {FHIRBULK_ERR_INVALID_ARGUMENT, "invalid_argument"},
        {FHIRBULK_ERR_INVALID_HANDLE, "invalid_handle"},
        {FHIRBULK_ERR_BUSY, "busy"},
        {FHIRBULK_ERR_CONFIG, "config"},
        {FHIRBULK_ERR_INTERNAL, "internal"},
        {FHIRBULK_ERR_NETWORK, "network"},
        {FHIRBULK_ERR_TIMEOUT, NULL},
        {FHIRBULK_ERR_PROTOCOL, "protocol"},
        {FHIRBULK_ERR_AUTH, "auth"},
        {FHIRBULK_ERR_BAD_REQUEST, "bad_request"},
        {FHIRBULK_ERR_UNAUTHORIZED, "unauthorized"},
        {FHIRBULK_ERR_FORBIDDEN, "forbidden"},
        {FHIRBULK_ERR_NOT_FOUND, "not_found"},
        {FHIRBULK_ERR_NOT_ACCEPTABLE, "not_acceptable"},
        {FHIRBULK_ERR_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"},
        {FHIRBULK_ERR_UNPROCESSABLE, "unprocessable"},
        {FHIRBULK_ERR_THROTTLED, "throttled"},
        {FHIRBULK_ERR_SERVER, "server"},
        {FHIRBULK_ERR_HTTP, "http"},
    };
    const size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        const char *name = fhirbulk_status_name(codes[i].code);
        CHECK(name != NULL && name[0] != '\0', "status %d has no name", (int)codes[i].code);
        CHECK(strcmp(name, "unknown") != 0, "status %d is named unknown", (int)codes[i].code);
        for (const char *c = name; *c; c++) {
            CHECK((*c >= 'a' && *c <= 'z') || *c == '_', "status name \"%s\" not snake_case", name);
        }
        if (codes[i].name != NULL) {
            CHECK(strcmp(name, codes[i].name) == 0, "status %d named \"%s\", expected \"%s\"",
                  (int)codes[i].code, name, codes[i].name);
        }
        for (size_t j = 0; j < i; j++) {
            CHECK(strcmp(name, fhirbulk_status_name(codes[j].code)) != 0,
                  "statuses %d and %d share the name \"%s\"", (int)codes[i].code,
                  (int)codes[j].code, name);
        }
        /* Static: the same pointer every time. */
        CHECK(fhirbulk_status_name(codes[i].code) == name, "status name is not static");
    }
    CHECK(strcmp(fhirbulk_status_name(-1), "unknown") == 0, "-1 should be unknown");
    CHECK(strcmp(fhirbulk_status_name(99), "unknown") == 0, "99 should be unknown");
    CHECK(strcmp(fhirbulk_status_name(INT32_MAX), "unknown") == 0, "INT32_MAX should be unknown");
    CHECK(strcmp(fhirbulk_status_name(INT32_MIN), "unknown") == 0, "INT32_MIN should be unknown");
}

int main(int argc, char **argv) {
    test_begin("test_misuse", 60);
    if (argc != 2) {
        fprintf(stderr, "usage: %s SERVER_ROOT\n", argv[0]);
        return 2;
    }
    versions_and_names();
    bogus_handles();
    null_arguments(argv[1]);
    return test_finish();
}
