/*
 * Attachments through the C ABI (config "attachments": "save"): every document the sandbox's
 * truth says is retrievable arrives once as a FHIRBULK_KIND_ATTACHMENT record whose content
 * has the truth's SHA-1, every other one once as an error record naming it; no other record
 * carries content; the progress counts both. Batches (export_next_batch) and single records
 * (export_next_record) both.
 *
 *   test_attachments SERVER_ROOT EXPECTED_FILE
 *
 * EXPECTED_FILE: one line per attachment of the truth (GET /_sandbox/truth?...&attachments=1),
 * "<outcome> <resource> <position> <sha1 hex>", written by tests/c/run.sh.
 */
#include "test_util.h"

#include <stdint.h>

/* ---- SHA-1 (FIPS 180-4), small and slow: the test's only need ---- */
typedef struct {
    uint32_t h[5];
    uint64_t len;
    uint8_t buf[64];
    size_t n;
} Sha1;

static uint32_t rol(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

static void sha1_block(Sha1 *s, const uint8_t *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    s->h[0] += a;
    s->h[1] += b;
    s->h[2] += c;
    s->h[3] += d;
    s->h[4] += e;
}

static void sha1_hex(const uint8_t *data, size_t len, char out[41]) {
    Sha1 s = {{0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}, 0, {0}, 0};
    for (size_t i = 0; i < len; i++) {
        s.buf[s.n++] = data[i];
        if (s.n == 64) {
            sha1_block(&s, s.buf);
            s.n = 0;
        }
    }
    s.len = (uint64_t)len * 8;
    s.buf[s.n++] = 0x80;
    if (s.n > 56) {
        while (s.n < 64) s.buf[s.n++] = 0;
        sha1_block(&s, s.buf);
        s.n = 0;
    }
    while (s.n < 56) s.buf[s.n++] = 0;
    for (int i = 7; i >= 0; i--) s.buf[s.n++] = (uint8_t)(s.len >> (8 * i));
    sha1_block(&s, s.buf);
    for (int i = 0; i < 5; i++) snprintf(out + 8 * i, 9, "%08x", s.h[i]);
}

/* ---- the truth ---- */
typedef struct {
    char outcome[24];
    char resource[96];
    long position;
    char sha1[41];
    int seen;
} Expected;

static Expected g_exp[4096];
static size_t g_nexp = 0;

static void load(const char *path) {
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s", path);
    while (g_nexp < sizeof g_exp / sizeof g_exp[0]) {
        Expected *e = &g_exp[g_nexp];
        if (fscanf(f, "%23s %95s %ld %40s", e->outcome, e->resource, &e->position, e->sha1) != 4) break;
        g_nexp++;
    }
    fclose(f);
    CHECK(g_nexp > 10, "an expected list of some size: %zu", g_nexp);
}

static int is_failure(const char *outcome) {
    return strcmp(outcome, "ok") != 0 && strcmp(outcome, "inline") != 0;
}

/* The string value after `key` (e.g. "\"resource\":\"") in a bounded record, into out. */
static int string_after(const char *data, size_t len, const char *key, char *out, size_t cap) {
    char *copy = malloc(len + 1);
    memcpy(copy, data, len);
    copy[len] = 0;
    const char *p = strstr(copy, key);
    int ok = 0;
    if (p) {
        p += strlen(key);
        size_t n = 0;
        while (p[n] && p[n] != '"' && n + 1 < cap) n++;
        memcpy(out, p, n);
        out[n] = 0;
        ok = 1;
    }
    free(copy);
    return ok;
}

static long number_after(const char *data, size_t len, const char *key) {
    char buf[32];
    char *copy = malloc(len + 1);
    memcpy(copy, data, len);
    copy[len] = 0;
    const char *p = strstr(copy, key);
    long v = -1;
    if (p) {
        snprintf(buf, sizeof buf, "%s", p + strlen(key));
        v = strtol(buf, NULL, 10);
    }
    free(copy);
    return v;
}

static Expected *find(const char *resource, long position) {
    for (size_t i = 0; i < g_nexp; i++)
        if (g_exp[i].position == position && strcmp(g_exp[i].resource, resource) == 0) return &g_exp[i];
    return NULL;
}

static void take(const FhirbulkRecord *r) {
    char resource[96];
    if (r->kind == FHIRBULK_KIND_ATTACHMENT) {
        CHECK(r->content != NULL || r->content_len == 0, "content of an attachment record");
        CHECK(string_after((const char *)r->data, r->len, "\"resource\":\"", resource, sizeof resource),
              "an attachment record names its resource");
        long pos = number_after((const char *)r->data, r->len, "\"position\":");
        Expected *e = find(resource, pos);
        CHECK(e != NULL, "an attachment the truth knows: %s %ld", resource, pos);
        CHECK(strcmp(e->outcome, "ok") == 0, "%s %ld is %s in the truth", resource, pos, e->outcome);
        CHECK(!e->seen, "%s %ld delivered twice", resource, pos);
        long size = number_after((const char *)r->data, r->len, "\"size\":");
        CHECK(size == (long)r->content_len, "size %ld, content_len %zu", size, r->content_len);
        char hex[41];
        sha1_hex(r->content, r->content_len, hex);
        CHECK(strcmp(hex, e->sha1) == 0, "%s %ld: SHA-1 %s, truth %s", resource, pos, hex, e->sha1);
        e->seen = 1;
        return;
    }
    CHECK(r->content == NULL && r->content_len == 0, "kind %u carries no content", r->kind);
    if (r->kind == FHIRBULK_KIND_ERROR) {
        CHECK(string_after((const char *)r->data, r->len, "{\"url\":\"resource\",\"valueString\":\"", resource,
                           sizeof resource),
              "an error record names its attachment: %.*s", (int)r->len, (const char *)r->data);
        long pos = number_after((const char *)r->data, r->len, "{\"url\":\"position\",\"valueInteger\":");
        Expected *e = find(resource, pos);
        CHECK(e != NULL && is_failure(e->outcome), "a failure the truth knows: %s %ld", resource, pos);
        CHECK(!e->seen, "%s %ld reported twice", resource, pos);
        e->seen = 1;
    }
}

static void run(const char *root, int batches) {
    for (size_t i = 0; i < g_nexp; i++) g_exp[i].seen = 0;
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"base_url\": \"%s/x/polls=0/fhir\", \"level\": \"group\", \"group_id\": \"g1\","
             " \"types\": [\"DocumentReference\", \"DiagnosticReport\"], \"poll_min_ms\": 10,"
             " \"attachments\": \"save\", \"attachment_max_bytes\": 1000000,"
             " \"retry_max_attempts\": 2, \"retry_backoff_min_ms\": 10, \"retry_backoff_max_ms\": 20}",
             root);
    FhirbulkExport *h = NULL;
    CHECK(export_start(cfg, &h) == FHIRBULK_OK, "export_start");
    for (;;) {
        FhirbulkStatus s;
        if (batches) {
            FhirbulkBatch b;
            s = export_next_batch(h, 64, 60000, &b);
            if (s == FHIRBULK_RECORD)
                for (size_t i = 0; i < b.count; i++) take(&b.records[i]);
        } else {
            FhirbulkRecord r;
            s = export_next_record(h, 60000, &r);
            if (s == FHIRBULK_RECORD) take(&r);
        }
        if (s == FHIRBULK_END) break;
        CHECK(s == FHIRBULK_RECORD, "pull: %s", fhirbulk_status_name(s));
    }
    uint64_t ok = 0, failed = 0;
    for (size_t i = 0; i < g_nexp; i++) {
        Expected *e = &g_exp[i];
        if (strcmp(e->outcome, "ok") == 0) {
            CHECK(e->seen, "%s %ld (ok) was not delivered", e->resource, e->position);
            ok++;
        } else if (is_failure(e->outcome)) {
            CHECK(e->seen, "%s %ld (%s) was not reported", e->resource, e->position, e->outcome);
            failed++;
        }
    }
    FhirbulkProgress p;
    CHECK(export_poll(h, &p) == FHIRBULK_OK, "export_poll");
    CHECK(p.attachments_fetched == ok, "attachments_fetched %" PRIu64 ", want %" PRIu64, p.attachments_fetched, ok);
    CHECK(p.attachment_errors == failed, "attachment_errors %" PRIu64 ", want %" PRIu64, p.attachment_errors, failed);
    CHECK(export_free(h) == FHIRBULK_OK, "export_free");
    printf("%s: %" PRIu64 " documents, %" PRIu64 " failures, as the truth says\n",
           batches ? "next_batch" : "next_record", ok, failed);
}

int main(int argc, char **argv) {
    test_begin("test_attachments", 240);
    if (argc != 3) {
        fprintf(stderr, "usage: %s SERVER_ROOT EXPECTED_FILE\n", argv[0]);
        return 2;
    }
    load(argv[2]);
    run(argv[1], 1);
    run(argv[1], 0);
    printf("PASS test_attachments (%d checks)\n", g_checks);
    return 0;
}
