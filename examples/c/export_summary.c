/*
 * export_summary: run a FHIR Bulk Data export with libfhirbulk and print what it delivered.
 *
 *   usage: export_summary BASE_URL [GROUP_ID] [TYPES]
 *
 *     BASE_URL  FHIR server base, e.g. http://127.0.0.1:8080/fhir
 *     GROUP_ID  export one Group (Group/[id]/$export); omit or "-" for a system-level export
 *     TYPES     comma-separated resource types (_type), e.g. Patient,Observation
 *
 *   environment (optional):
 *     FHIRBULK_CA_BUNDLE    PEM file of CA certificates to trust besides the system's (the
 *                           config's ca_bundle), e.g. a private CA or the sandbox's test CA
 *     FHIRBULK_CLIENT_CERT  PEM file with a client certificate and its key (client_cert),
 *                           for servers that require mutual TLS
 *
 *   build:  cc -std=c11 export_summary.c -Iinclude -Ltarget/release -lfhirbulk \
 *              -Wl,-rpath,$PWD/target/release -o export_summary
 *
 * The program builds its config key by key (fhirbulk_config_set: no JSON to write), starts the
 * export, shows the server's progress while the server prepares the files, then pulls every
 * record and counts them per resource type. On failure it prints the error in its parts (HTTP
 * status, URL, the server's OperationOutcome issues) and the JSON detail, and exits 1.
 *
 * Copy it freely: it uses only the public API in fhirbulk.h.
 */
#define _POSIX_C_SOURCE 200809L

#include "fhirbulk.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_TYPES 64

/* Records counted per resource type (and per kind: output / error / deleted). */
struct type_count {
    char type[64];
    uint32_t kind;
    uint64_t records;
    uint64_t bytes;
};

static struct type_count counts[MAX_TYPES];
static size_t ncounts;

static void count_record(const FhirbulkRecord *rec) {
    /* rec->resource_type is NUL-terminated; rec->data is NOT (use rec->len). */
    for (size_t i = 0; i < ncounts; i++) {
        if (counts[i].kind == rec->kind && strcmp(counts[i].type, rec->resource_type) == 0) {
            counts[i].records++;
            counts[i].bytes += rec->len;
            return;
        }
    }
    if (ncounts < MAX_TYPES) {
        struct type_count *c = &counts[ncounts++];
        snprintf(c->type, sizeof c->type, "%s", rec->resource_type);
        c->kind = rec->kind;
        c->records = 1;
        c->bytes = rec->len;
    }
}

static const char *kind_name(uint32_t kind) {
    switch (kind) {
    case FHIRBULK_KIND_OUTPUT: return "output";
    case FHIRBULK_KIND_ERROR: return "error";
    case FHIRBULK_KIND_DELETED: return "deleted";
    default: return "?";
    }
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Set one config key; on a wrong key or value say which and why. */
static int set(FhirbulkConfig *c, const char *key, const char *value) {
    FhirbulkStatus s = fhirbulk_config_set(c, key, value);
    if (s != FHIRBULK_OK) {
        char msg[1024];
        export_error_message(NULL, msg, sizeof msg); /* names the key */
        fprintf(stderr, "config %s: %s\n", key, msg);
        return -1;
    }
    return 0;
}

/* Build the config key by key (no JSON to write): fhirbulk_config_set reads each value as its
 * key's type ("2000" a number, "Patient,Observation" a list). Only base_url is required. */
static FhirbulkConfig *build_config(const char *base_url, const char *group, const char *types) {
    FhirbulkConfig *c = NULL;
    if (fhirbulk_config_new(&c) != FHIRBULK_OK) return NULL;
    int bad = set(c, "base_url", base_url);
    if (group != NULL) {
        bad |= set(c, "level", "group") | set(c, "group_id", group);
    }
    if (types != NULL && types[0] != '\0') bad |= set(c, "types", types);
    /* TLS settings from the environment (see the usage above). */
    const char *ca = getenv("FHIRBULK_CA_BUNDLE"), *cert = getenv("FHIRBULK_CLIENT_CERT");
    if (ca != NULL && ca[0] != '\0') bad |= set(c, "ca_bundle", ca);
    if (cert != NULL && cert[0] != '\0') bad |= set(c, "client_cert", cert);
    /* Poll the status URL at least every 2 s; a server's Retry-After still wins within that. */
    bad |= set(c, "poll_min_ms", "100") | set(c, "poll_max_ms", "2000");
    if (bad) {
        fhirbulk_config_free(c);
        return NULL;
    }
    return c;
}

/* Print the error in its parts (no JSON to parse), then the whole JSON detail. With h == NULL:
 * the error export_start_config gave. */
static void print_error(const FhirbulkExport *h, FhirbulkStatus s) {
    char msg[2048], url[1024], code[64], diag[1024];
    export_error_message(h, msg, sizeof msg);
    export_error_url(h, url, sizeof url);
    fprintf(stderr, "export failed (%s, status %d, HTTP %u): %s%s%s\n", fhirbulk_status_name(s),
            (int)s, export_error_http_status(h), msg, url[0] ? " at " : "", url);
    for (size_t i = 0; i < export_error_issue_count(h); i++) {
        export_error_issue(h, i, FHIRBULK_ISSUE_CODE, code, sizeof code);
        export_error_issue(h, i, FHIRBULK_ISSUE_DIAGNOSTICS, diag, sizeof diag);
        fprintf(stderr, "  server issue %s: %s\n", code, diag);
    }
    /* snprintf semantics: a call with a NULL buffer returns the length needed. */
    size_t json_len = export_last_error_json(h, NULL, 0);
    char *json = malloc(json_len + 1);
    if (json != NULL) {
        export_last_error_json(h, json, json_len + 1);
        fprintf(stderr, "detail: %s\n", json);
    }
    free(json);
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: %s BASE_URL [GROUP_ID|-] [TYPES]\n", argv[0]);
        return 2;
    }
    const char *base_url = argv[1];
    const char *group = (argc > 2 && strcmp(argv[2], "-") != 0) ? argv[2] : NULL;
    const char *types = argc > 3 ? argv[3] : NULL;

    /* A library built for another ABI than this header describes would misbehave: check. */
    if (fhirbulk_abi_version() != FHIRBULK_ABI_VERSION) {
        fprintf(stderr, "libfhirbulk ABI %u, header ABI %u\n", fhirbulk_abi_version(),
                (unsigned)FHIRBULK_ABI_VERSION);
        return 1;
    }

    FhirbulkConfig *config = build_config(base_url, group, types);
    if (config == NULL) return 2;
    printf("fhirbulk %s: exporting %s%s from %s", fhirbulk_version(), group ? "Group/" : "system",
           group ? group : "", base_url);
    if (types != NULL) printf(", types %s", types);
    printf("\n");

    double t0 = now_seconds();
    FhirbulkExport *h = NULL;
    FhirbulkStatus s = export_start_config(config, &h);
    fhirbulk_config_free(config); /* the export does not need it any more */
    if (s != FHIRBULK_OK) {
        print_error(NULL, s);
        return 1;
    }

    /* Pull records. A short timeout lets us print progress while the server is preparing the
     * files; a consumer that does not care would simply pass -1 (wait as long as it takes). */
    FhirbulkRecord rec;
    uint64_t total = 0, bytes = 0;
    char last_progress[sizeof ((FhirbulkProgress *)0)->server_progress] = "";
    uint32_t last_state = UINT32_MAX;
    for (;;) {
        s = export_next_record(h, 500, &rec);
        if (s == FHIRBULK_RECORD) {
            /* rec is valid until the next call on h: copy what you keep. */
            count_record(&rec);
            total++;
            bytes += rec.len;
            continue;
        }
        if (s != FHIRBULK_TIMEOUT) break; /* END, CANCELLED or an error */

        /* Nothing for 500 ms: show where the export is. export_poll never blocks. */
        FhirbulkProgress p;
        if (export_poll(h, &p) == FHIRBULK_OK &&
            (p.state != last_state || strcmp(p.server_progress, last_progress) != 0)) {
            const char *state = p.state == FHIRBULK_STATE_KICKING_OFF   ? "kicking off"
                                : p.state == FHIRBULK_STATE_WAITING     ? "server preparing files"
                                : p.state == FHIRBULK_STATE_DOWNLOADING ? "downloading"
                                                                        : "finishing";
            printf("  [%6.1f s] %s; polls %u%s%s; files %u/%u\n", now_seconds() - t0, state,
                   p.polls, p.server_progress[0] ? "; server says: " : "", p.server_progress,
                   p.files_done, p.files_total);
            last_state = p.state;
            snprintf(last_progress, sizeof last_progress, "%s", p.server_progress);
        }
    }
    double elapsed = now_seconds() - t0;

    if (s != FHIRBULK_END) {
        print_error(h, s);
        export_free(h);
        return 1;
    }

    FhirbulkProgress p;
    export_poll(h, &p);

    printf("\n%-24s %-8s %12s %14s\n", "resource type", "kind", "records", "bytes");
    printf("%-24s %-8s %12s %14s\n", "------------------------", "--------", "------------",
           "--------------");
    for (size_t i = 0; i < ncounts; i++) {
        printf("%-24s %-8s %12" PRIu64 " %14" PRIu64 "\n", counts[i].type,
               kind_name(counts[i].kind), counts[i].records, counts[i].bytes);
    }
    printf("%-24s %-8s %12" PRIu64 " %14" PRIu64 "\n", "total", "", total, bytes);
    printf("\n%u files, %" PRIu64 " bytes downloaded, %u status polls\n", p.files_total,
           p.bytes_downloaded, p.polls);
    printf("elapsed %.2f s, %.0f records/s\n", elapsed,
           elapsed > 0 ? (double)total / elapsed : 0.0);

    /* The manifest's transactionTime is the `since` of the next incremental export. */
    char manifest[65536];
    size_t mlen = export_manifest(h, manifest, sizeof manifest);
    const char *tt = mlen > 0 ? strstr(manifest, "\"transactionTime\"") : NULL;
    if (tt != NULL) {
        const char *v = strchr(tt + 17, '"');
        const char *e = v ? strchr(v + 1, '"') : NULL;
        if (v && e) printf("transactionTime %.*s (use it as \"since\" next time)\n",
                           (int)(e - v - 1), v + 1);
    }

    export_free(h);
    return 0;
}
