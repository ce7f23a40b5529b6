/*
 * test_arrow: the export as Arrow record batches through the Arrow C Data Interface and the C
 * Stream Interface, consumed the way a C program without any Arrow library would (walking the
 * structs of fhirbulk.h), under AddressSanitizer: every row comes once (counts per type equal the
 * sandbox's truth), schemas have the documented shape, everything received is released, and a
 * stream stays safe to use (and to release) after export_free.
 *
 * usage: test_arrow SERVER_ROOT TRUTH_JSON TYPES_JSON
 *   TRUTH_JSON  /_sandbox/truth?level=group&group=g1&_type=Patient,Observation
 *   TYPES_JSON  ["Patient","Observation"]
 */
#include "test_util.h"

#define CONFIG                                                                                    \
    "{\"base_url\": \"%s/fhir\", \"level\": \"group\", \"group_id\": \"g1\", \"types\": %s, "    \
    "\"poll_min_ms\": 10, \"poll_max_ms\": 200}"

/* The child of a struct schema named `name`, or -1. */
static int64_t child_index(const struct ArrowSchema *s, const char *name) {
    for (int64_t i = 0; i < s->n_children; i++) {
        if (strcmp(s->children[i]->name, name) == 0) return i;
    }
    return -1;
}

/* A batch's schema: a struct ("+s") whose fields include id (utf8 "u"), ..., _remainder last. */
static void check_schema(const struct ArrowSchema *s, const char *type) {
    CHECK(s->release != NULL, "%s: schema not released yet", type);
    CHECK(strcmp(s->format, "+s") == 0, "%s: batch schema format %s", type, s->format);
    CHECK(s->n_children > 3, "%s: %lld fields", type, (long long)s->n_children);
    int64_t id = child_index(s, "id");
    CHECK(id >= 0 && strcmp(s->children[id]->format, "u") == 0, "%s: id is utf8", type);
    CHECK(strcmp(s->children[s->n_children - 1]->name, "_remainder") == 0, "%s: _remainder last",
          type);
    if (strcmp(type, "Patient") == 0) {
        int64_t name = child_index(s, "name");
        CHECK(name >= 0 && strcmp(s->children[name]->format, "+l") == 0, "Patient.name is a list");
        int64_t active = child_index(s, "active");
        CHECK(active >= 0 && strcmp(s->children[active]->format, "b") == 0, "Patient.active bool");
    }
}

/* The ids of a batch's rows: the utf8 child "id" (offsets buffer 1, data buffer 2). */
static long count_ids(const struct ArrowArray *a, const struct ArrowSchema *s) {
    int64_t id = child_index(s, "id");
    const struct ArrowArray *ids = a->children[id];
    CHECK(ids->length == a->length, "id column length %lld of %lld", (long long)ids->length,
          (long long)a->length);
    CHECK(ids->n_buffers == 3, "utf8 has 3 buffers");
    const int32_t *offsets = ids->buffers[1];
    long n = 0;
    for (int64_t i = 0; i < ids->length; i++) {
        int32_t len = offsets[ids->offset + i + 1] - offsets[ids->offset + i];
        CHECK(len > 0, "row %lld has an id", (long long)i);
        n++;
    }
    return n;
}

/* "rows" of `type` in export_write_parquet's summary ({"types":{"T":{"parts":n,"rows":r}}}). */
static long json_rows(const char *summary, const char *type) {
    char key[80];
    snprintf(key, sizeof key, "\"%s\":{", type);
    const char *p = strstr(summary, key);
    if (!p) return -1;
    const char *r = strstr(p, "\"rows\":");
    return r ? strtol(r + 7, NULL, 10) : -1;
}

int main(int argc, char **argv) {
    test_begin("test_arrow", 240);
    if (argc != 4) FAIL("usage: test_arrow SERVER_ROOT TRUTH_JSON TYPES_JSON");
    const char *root = argv[1], *truth = argv[2], *types = argv[3];
    CHECK(fhirbulk_has_arrow() == 1, "the test library is built with the arrow feature");

    /* A type's schema without an export. */
    struct ArrowSchema schema;
    CHECK_STATUS(fhirbulk_arrow_schema("Patient", &schema), FHIRBULK_OK);
    check_schema(&schema, "Patient");
    schema.release(&schema);
    CHECK(schema.release == NULL, "release marks the schema released");
    CHECK_STATUS(fhirbulk_arrow_schema(NULL, &schema), FHIRBULK_ERR_INVALID_ARGUMENT);

    /* 1. Mixed batches with export_next_arrow_batch: small batches, counts per type. */
    FhirbulkExport *h = start_export(CONFIG, root, types);
    long patients = 0, observations = 0, batches = 0;
    for (;;) {
        struct ArrowArray array;
        char type[64];
        FhirbulkStatus s = export_next_arrow_batch(h, 16, -1, &array, &schema, type, sizeof type);
        if (s == FHIRBULK_END) break;
        CHECK(s == FHIRBULK_RECORD, "export_next_arrow_batch: %d (%s): %s", (int)s,
              fhirbulk_status_name(s), last_error_of(h));
        check_schema(&schema, type);
        CHECK(array.length >= 1 && array.length <= 16, "batch of %lld rows", (long long)array.length);
        CHECK(array.n_children == schema.n_children, "array and schema agree");
        long n = count_ids(&array, &schema);
        if (strcmp(type, "Patient") == 0) patients += n;
        else if (strcmp(type, "Observation") == 0) observations += n;
        else FAIL("unexpected type %s", type);
        batches++;
        array.release(&array);
        schema.release(&schema);
    }
    CHECK(patients == truth_count(truth, "Patient"), "Patient rows %ld, truth %ld", patients,
          truth_count(truth, "Patient"));
    CHECK(observations == truth_count(truth, "Observation"), "Observation rows %ld, truth %ld",
          observations, truth_count(truth, "Observation"));
    CHECK(batches > 2, "several batches (%ld)", batches);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  next_arrow_batch: %ld Patient, %ld Observation rows in %ld batches\n", patients,
           observations, batches);

    /* 2. A stream per type, read one after the other (the other type's batches are held). */
    h = start_export(CONFIG, root, types);
    const char *names[2] = {"Observation", "Patient"};
    long counts[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        struct ArrowArrayStream stream;
        CHECK_STATUS(export_arrow_stream(h, names[k], 1000, &stream), FHIRBULK_OK);
        CHECK(stream.get_schema(&stream, &schema) == 0, "get_schema");
        check_schema(&schema, names[k]);
        for (;;) {
            struct ArrowArray array;
            int rc = stream.get_next(&stream, &array);
            CHECK(rc == 0, "get_next: %d %s", rc, stream.get_last_error(&stream));
            if (array.release == NULL) break; /* the end */
            counts[k] += count_ids(&array, &schema);
            array.release(&array);
        }
        schema.release(&schema);
        stream.release(&stream);
        CHECK(stream.release == NULL, "release marks the stream released");
    }
    CHECK(counts[0] == truth_count(truth, "Observation"), "stream Observation %ld", counts[0]);
    CHECK(counts[1] == truth_count(truth, "Patient"), "stream Patient %ld", counts[1]);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  streams: %ld Observation, %ld Patient rows\n", counts[0], counts[1]);

    /* 3. A stream outlives export_free: get_next fails saying so, release is safe. */
    h = start_export(CONFIG, root, types);
    struct ArrowArrayStream stream;
    CHECK_STATUS(export_arrow_stream(h, "Patient", 1000, &stream), FHIRBULK_OK);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    struct ArrowArray array;
    int rc = stream.get_next(&stream, &array);
    CHECK(rc != 0, "get_next after export_free fails");
    const char *why = stream.get_last_error(&stream);
    CHECK(why != NULL && strstr(why, "freed") != NULL, "the error says why: %s", why ? why : "");
    CHECK(strstr(why, "[invalid_handle]") != NULL, "and its name: %s", why);
    stream.release(&stream);

    /* 4. export_write_parquet: a dataset in a new directory, written in turns of 50 ms. */
    CHECK(fhirbulk_has_parquet() == 1, "the test library is built with the parquet feature");
    char dir[] = "/tmp/fhirbulk-c-parquet-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    h = start_export(CONFIG, root, types);
    char summary[4096];
    CHECK_STATUS(export_write_parquet(h, dir, "{\"compresion\":\"zstd\"}", 50, summary,
                                      sizeof summary),
                 FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK(strstr(last_error_of(h), "compresion") != NULL, "the unknown option is named: %s",
          last_error_of(h));
    FhirbulkStatus s;
    int turns = 0;
    while ((s = export_write_parquet(h, dir, "{\"compression\":\"zstd\",\"threads\":2}", 50,
                                     summary, sizeof summary)) == FHIRBULK_TIMEOUT)
        turns++;
    CHECK(s == FHIRBULK_END, "export_write_parquet: %d (%s): %s", (int)s, fhirbulk_status_name(s),
          last_error_of(h));
    long pq_patients = json_rows(summary, "Patient"), pq_obs = json_rows(summary, "Observation");
    CHECK(pq_patients == truth_count(truth, "Patient"), "Parquet Patient rows %ld: %s",
          pq_patients, summary);
    CHECK(pq_obs == truth_count(truth, "Observation"), "Parquet Observation rows %ld: %s",
          pq_obs, summary);
    /* Again after the end: the same summary; Arrow pulls are refused on this export. */
    char again[4096];
    CHECK_STATUS(export_write_parquet(h, dir, NULL, 0, again, sizeof again), FHIRBULK_END);
    CHECK(strcmp(summary, again) == 0, "the summary again");
    CHECK_STATUS(export_write_parquet(h, "/tmp", NULL, 0, NULL, 0), FHIRBULK_ERR_INVALID_ARGUMENT);
    char type[64];
    CHECK_STATUS(export_next_arrow_batch(h, 16, 0, &array, &schema, type, sizeof type),
                 FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    char part[512];
    snprintf(part, sizeof part, "%s/Patient/part-00000.parquet", dir);
    FILE *f = fopen(part, "rb");
    CHECK(f != NULL, "%s exists", part);
    char magic[4] = {0};
    CHECK(fread(magic, 1, 4, f) == 4 && memcmp(magic, "PAR1", 4) == 0, "a Parquet file");
    fclose(f);
    /* An export with a record pulled already is refused (the dataset would miss it). */
    h = start_export(CONFIG, root, types);
    FhirbulkRecord rec;
    CHECK_STATUS(export_next_record(h, -1, &rec), FHIRBULK_RECORD);
    char other[] = "/tmp/fhirbulk-c-parquet2-XXXXXX";
    CHECK(mkdtemp(other) != NULL, "mkdtemp");
    CHECK_STATUS(export_write_parquet(h, other, NULL, -1, NULL, 0), FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK(strstr(last_error_of(h), "pulled already") != NULL, "says why: %s", last_error_of(h));
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    rmdir(other);
    /* A directory with a dataset is refused, unless overwrite. */
    h = start_export(CONFIG, root, types);
    CHECK_STATUS(export_write_parquet(h, dir, NULL, -1, NULL, 0), FHIRBULK_ERR_INVALID_ARGUMENT);
    CHECK(strstr(last_error_of(h), "overwrite") != NULL, "says how: %s", last_error_of(h));
    CHECK_STATUS(export_write_parquet(h, dir, "{\"overwrite\":true}", -1, summary, sizeof summary),
                 FHIRBULK_END);
    CHECK(json_rows(summary, "Patient") == pq_patients, "overwritten: %s", summary);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  write_parquet: %ld Patient, %ld Observation rows (%d turns of 50 ms): %s\n",
           pq_patients, pq_obs, turns, summary);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "rm -rf the dataset");
    return test_finish();
}
