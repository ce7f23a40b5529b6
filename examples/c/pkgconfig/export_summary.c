/*
 * export_summary: a FHIR Bulk Data export with an installed libfhirbulk, built with pkg-config.
 * Prints the records per resource type.
 *
 *   usage: export_summary BASE_URL [GROUP_ID|-] [TYPES]      e.g.
 *          export_summary http://127.0.0.1:8080/fhir g1 Patient,Observation
 *
 *   build:  cc -std=c11 export_summary.c $(pkg-config --cflags --libs fhirbulk) -o export_summary
 *           (or `make`; `make static` links libfhirbulk.a). With a prefix outside the
 *           pkg-config search path: export PKG_CONFIG_PATH=PREFIX/lib/pkgconfig.
 *
 * A longer version with progress output is examples/c/export_summary.c. Copy it freely.
 */
#include <fhirbulk.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TYPES 64

static struct { char type[64]; uint32_t kind; uint64_t records; } counts[MAX_TYPES];
static size_t ncounts;

static void count(const FhirbulkRecord *r) {
    size_t i = 0;
    while (i < ncounts && !(counts[i].kind == r->kind && !strcmp(counts[i].type, r->resource_type)))
        i++;
    if (i == ncounts) {
        if (ncounts == MAX_TYPES) return;
        snprintf(counts[i].type, sizeof counts[i].type, "%s", r->resource_type);
        counts[i].kind = r->kind;
        ncounts++;
    }
    counts[i].records++;
}

/* Appends s[0..len) to buf as a JSON string literal (quotes and backslashes escaped). */
static void append_json_string(char *buf, size_t cap, const char *s, size_t len) {
    size_t n = strlen(buf);
    if (n + 1 < cap) buf[n++] = '"';
    for (size_t i = 0; i < len && n + 3 < cap; i++) {
        if (s[i] == '"' || s[i] == '\\') buf[n++] = '\\';
        if ((unsigned char)s[i] >= 0x20) buf[n++] = s[i];
    }
    if (n + 1 < cap) buf[n++] = '"';
    buf[n] = '\0';
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s BASE_URL [GROUP_ID|-] [TYPES]\n", argv[0]);
        return 2;
    }
    const char *group = argc > 2 && strcmp(argv[2], "-") != 0 ? argv[2] : NULL;

    /* The config: {"base_url": ..., "level": "group", "group_id": ..., "types": [...]} */
    char cfg[8192] = "{\"base_url\": ";
    append_json_string(cfg, sizeof cfg, argv[1], strlen(argv[1]));
    if (group) {
        strncat(cfg, ", \"level\": \"group\", \"group_id\": ", sizeof cfg - strlen(cfg) - 1);
        append_json_string(cfg, sizeof cfg, group, strlen(group));
    }
    if (argc > 3) {
        strncat(cfg, ", \"types\": [", sizeof cfg - strlen(cfg) - 1);
        for (const char *p = argv[3]; *p;) {
            size_t len = strcspn(p, ",");
            if (len > 0) {
                if (cfg[strlen(cfg) - 1] != '[') strncat(cfg, ",", sizeof cfg - strlen(cfg) - 1);
                append_json_string(cfg, sizeof cfg, p, len);
            }
            p += len + (p[len] == ',');
        }
        strncat(cfg, "]", sizeof cfg - strlen(cfg) - 1);
    }
    strncat(cfg, ", \"poll_min_ms\": 100, \"poll_max_ms\": 2000}", sizeof cfg - strlen(cfg) - 1);

    printf("fhirbulk %s (C, pkg-config): exporting %s%s from %s\n", fhirbulk_version(),
           group ? "Group/" : "system", group ? group : "", argv[1]);
    FhirbulkExport *h = NULL;
    FhirbulkStatus s = export_start(cfg, &h);
    FhirbulkBatch batch;
    uint64_t total = 0;
    /* Records come one file's chunk at a time; they stay valid until the next call on h. */
    while (s == FHIRBULK_OK || s == FHIRBULK_RECORD) {
        s = export_next_batch(h, 4096, -1, &batch);
        for (size_t i = 0; s == FHIRBULK_RECORD && i < batch.count; i++) count(&batch.records[i]);
        if (s == FHIRBULK_RECORD) total += batch.count;
    }
    if (s != FHIRBULK_END) {
        char msg[1024], detail[8192];
        export_last_error(h, msg, sizeof msg); /* with h NULL: export_start's error */
        export_last_error_json(h, detail, sizeof detail);
        fprintf(stderr, "export failed (%s, status %d): %s\ndetail: %s\n",
                fhirbulk_status_name(s), (int)s, msg, detail);
        export_free(h);
        return 1;
    }
    static const char *kinds[] = {"output", "error", "deleted"};
    printf("\n%-24s %-8s %12s\n", "resource type", "kind", "records");
    for (size_t i = 0; i < ncounts; i++)
        printf("%-24s %-8s %12" PRIu64 "\n", counts[i].type,
               counts[i].kind < 3 ? kinds[counts[i].kind] : "?", counts[i].records);
    printf("%-24s %-8s %12" PRIu64 "\n", "total", "", total);
    export_free(h);
    return 0;
}
