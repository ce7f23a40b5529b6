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
 * The program starts the export, shows the server's progress while the server prepares the
 * files, then pulls every record and counts them per resource type. On failure it prints the
 * error message and the JSON detail (HTTP status, URL, OperationOutcome issues) and exits 1.
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

/* Append `s` to `out` as a JSON string literal (quotes and backslashes escaped). */
static size_t json_string(char *out, size_t cap, size_t used, const char *s, size_t len) {
    used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, "\"");
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '"' || c == '\\') {
            used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, "\\%c", c);
        } else if ((unsigned char)c >= 0x20) {
            used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, "%c", c);
        }
    }
    used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, "\"");
    return used;
}

/* Build the export_start config JSON. Only base_url is required; unknown keys are errors. */
static int build_config(char *out, size_t cap, const char *base_url, const char *group,
                        const char *types) {
    size_t used = (size_t)snprintf(out, cap, "{\"base_url\": ");
    used = json_string(out, cap, used, base_url, strlen(base_url));
    if (group != NULL) {
        used += (size_t)snprintf(out + used, used < cap ? cap - used : 0,
                                 ", \"level\": \"group\", \"group_id\": ");
        used = json_string(out, cap, used, group, strlen(group));
    } else {
        used += (size_t)snprintf(out + used, used < cap ? cap - used : 0,
                                 ", \"level\": \"system\"");
    }
    if (types != NULL && types[0] != '\0') {
        /* "Patient,Observation" -> "types": ["Patient", "Observation"] */
        used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, ", \"types\": [");
        const char *p = types;
        int first = 1;
        while (*p != '\0') {
            size_t len = strcspn(p, ",");
            if (len > 0) {
                if (!first) used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, ", ");
                used = json_string(out, cap, used, p, len);
                first = 0;
            }
            p += len;
            if (*p == ',') p++;
        }
        used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, "]");
    }
    /* TLS settings from the environment (see the usage above). */
    const char *tls_keys[2][2] = {{"FHIRBULK_CA_BUNDLE", "ca_bundle"},
                                  {"FHIRBULK_CLIENT_CERT", "client_cert"}};
    for (size_t i = 0; i < 2; i++) {
        const char *path = getenv(tls_keys[i][0]);
        if (path != NULL && path[0] != '\0') {
            used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, ", \"%s\": ",
                                     tls_keys[i][1]);
            used = json_string(out, cap, used, path, strlen(path));
        }
    }
    /* Poll the status URL at least every 2 s; a server's Retry-After still wins within that. */
    used += (size_t)snprintf(out + used, used < cap ? cap - used : 0,
                             ", \"poll_min_ms\": 100, \"poll_max_ms\": 2000}");
    return used < cap ? 0 : -1;
}

/* Print the error message and its JSON detail. With h == NULL: the error export_start gave. */
static void print_error(const FhirbulkExport *h, FhirbulkStatus s) {
    /* snprintf semantics: a call with a NULL buffer returns the length needed. */
    size_t msg_len = export_last_error(h, NULL, 0);
    size_t json_len = export_last_error_json(h, NULL, 0);
    char *msg = malloc(msg_len + 1);
    char *json = malloc(json_len + 1);
    if (msg != NULL && json != NULL) {
        export_last_error(h, msg, msg_len + 1);
        export_last_error_json(h, json, json_len + 1);
        fprintf(stderr, "export failed (%s, status %d): %s\ndetail: %s\n",
                fhirbulk_status_name(s), (int)s, msg, json);
    }
    free(msg);
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

    char config[8192];
    if (build_config(config, sizeof config, base_url, group, types) != 0) {
        fprintf(stderr, "arguments too long\n");
        return 2;
    }
    printf("fhirbulk %s: exporting %s%s from %s", fhirbulk_version(), group ? "Group/" : "system",
           group ? group : "", base_url);
    if (types != NULL) printf(", types %s", types);
    printf("\n");

    double t0 = now_seconds();
    FhirbulkExport *h = NULL;
    FhirbulkStatus s = export_start(config, &h);
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
