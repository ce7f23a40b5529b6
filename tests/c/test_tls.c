/*
 * test_tls: exports over HTTPS through the C ABI, against sandboxes serving TLS with a test CA
 * (fhirbulk-sandbox --tls-dir DIR [--mtls]).
 *   - without ca_bundle the system trust store refuses the test CA: FHIRBULK_ERR_NETWORK, the
 *     message says the certificate is not from a trusted CA and names ca_bundle
 *   - with ca_bundle the export delivers exactly the truth's records
 *   - a server requiring a client certificate refuses an export without client_cert, naming it,
 *     and delivers everything with it
 *
 * usage: test_tls TLS_ROOT MTLS_ROOT TLS_DIR MTLS_DIR TRUTH_JSON TYPES_JSON
 *   TLS_ROOT, MTLS_ROOT  https://127.0.0.1:PORT of a sandbox with --tls-dir TLS_DIR and of one
 *                        with --tls-dir MTLS_DIR --mtls (each DIR holds ca.pem and client.pem)
 *   TRUTH_JSON           /_sandbox/truth?level=group&group=g1&_type=... (the same for both)
 *   TYPES_JSON           e.g. ["Patient","Observation"]
 */
#include "test_util.h"

#define FAST                                                                                     \
    "\"level\": \"group\", \"group_id\": \"g1\", \"poll_min_ms\": 10, \"poll_max_ms\": 200, "   \
    "\"retry_max_attempts\": 3, \"retry_backoff_min_ms\": 10"

/* Pull to the end: the number of output records, and the final status. */
static FhirbulkStatus drain(FhirbulkExport *h, long *records) {
    FhirbulkRecord rec;
    FhirbulkStatus s;
    *records = 0;
    while ((s = export_next_record(h, -1, &rec)) == FHIRBULK_RECORD) {
        if (rec.kind == FHIRBULK_KIND_OUTPUT) (*records)++;
    }
    return s;
}

/* The export fails with a network error whose message holds every needle. */
static void expect_refused(FhirbulkExport *h, const char *what, const char *needle1,
                           const char *needle2) {
    long n = 0;
    FhirbulkStatus s = drain(h, &n);
    CHECK(s == FHIRBULK_ERR_NETWORK, "%s: status %d (%s), expected NETWORK: %s", what, (int)s,
          fhirbulk_status_name(s), last_error_of(h));
    CHECK(n == 0, "%s: %ld records over a refused connection", what, n);
    const char *msg = last_error_of(h);
    CHECK(strstr(msg, "TLS handshake refused") != NULL, "%s: %s", what, msg);
    CHECK(strstr(msg, needle1) != NULL, "%s: '%s' in %s", what, needle1, msg);
    CHECK(strstr(msg, needle2) != NULL, "%s: '%s' in %s", what, needle2, msg);
    char json[4096];
    export_last_error_json(h, json, sizeof json);
    CHECK(strstr(json, "\"code\":200") != NULL, "%s: JSON detail %s", what, json);
    CHECK(strstr(json, "\"url\":\"https://127.0.0.1:") != NULL, "%s: JSON detail %s", what, json);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
}

static void expect_all(FhirbulkExport *h, const char *what, long want) {
    long n = 0;
    FhirbulkStatus s = drain(h, &n);
    CHECK(s == FHIRBULK_END, "%s: status %d (%s): %s", what, (int)s, fhirbulk_status_name(s),
          last_error_of(h));
    CHECK(n == want, "%s: %ld records, truth %ld", what, n, want);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  %s: %ld records\n", what, n);
}

int main(int argc, char **argv) {
    test_begin("test_tls", 240);
    if (argc != 7) FAIL("usage: test_tls TLS_ROOT MTLS_ROOT TLS_DIR MTLS_DIR TRUTH_JSON TYPES_JSON");
    const char *tls = argv[1], *mtls = argv[2], *tls_dir = argv[3], *mtls_dir = argv[4];
    long want = truth_total(argv[5]);
    const char *types = argv[6];
    CHECK(strncmp(tls, "https://", 8) == 0 && strncmp(mtls, "https://", 8) == 0,
          "HTTPS roots: %s %s", tls, mtls);
    CHECK(want > 0, "truth %s", argv[5]);

    /* The default trust store does not know the sandbox's test CA. */
    expect_refused(start_export("{\"base_url\": \"%s/fhir\", \"types\": %s, " FAST "}", tls, types),
                   "no ca_bundle", "not issued by a CA this client trusts", "ca_bundle");

    /* ca_bundle trusts it. */
    expect_all(start_export("{\"base_url\": \"%s/fhir\", \"types\": %s, \"ca_bundle\": "
                            "\"%s/ca.pem\", " FAST "}",
                            tls, types, tls_dir),
               "ca_bundle", want);

    /* Mutual TLS: refused without a client certificate, served with one. */
    expect_refused(start_export("{\"base_url\": \"%s/fhir\", \"types\": %s, \"ca_bundle\": "
                                "\"%s/ca.pem\", " FAST "}",
                                mtls, types, mtls_dir),
                   "mtls without client_cert", "client certificate", "client_cert");
    expect_all(start_export("{\"base_url\": \"%s/fhir\", \"types\": %s, \"ca_bundle\": "
                            "\"%s/ca.pem\", \"client_cert\": \"%s/client.pem\", " FAST "}",
                            mtls, types, mtls_dir, mtls_dir),
               "mtls with client_cert", want);
    return test_finish();
}
