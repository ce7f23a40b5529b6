/*
 * The C boundary under concurrent abuse: many threads call the any-thread functions on one
 * handle (poll, last error, manifest, files, checkpoint, cancel) while a consumer pulls, then one
 * thread frees the handle while the others keep calling. Every call must return a status (or a
 * length) and never crash; after the free, every call on the handle says INVALID_HANDLE.
 * Run under AddressSanitizer, which turns any use after free into a failure.
 *
 * usage: test_threads SANDBOX_ROOT_URL
 */
#include "test_util.h"

#include <pthread.h>
#include <stdatomic.h>

#define THREADS 8

static FhirbulkExport *g_handle;
static atomic_int g_freed;
static atomic_int g_stop;
static atomic_long g_calls;
static atomic_long g_invalid_after_free;
static atomic_int g_bad_status;

static void *hammer(void *arg) {
    long id = (long)arg;
    char buf[256];
    while (!atomic_load(&g_stop)) {
        FhirbulkProgress p;
        FhirbulkStatus s = export_poll(g_handle, &p);
        if (s != FHIRBULK_OK && s != FHIRBULK_ERR_INVALID_HANDLE) atomic_store(&g_bad_status, s);
        if (s == FHIRBULK_ERR_INVALID_HANDLE) {
            if (!atomic_load(&g_freed)) atomic_store(&g_bad_status, s);
            atomic_fetch_add(&g_invalid_after_free, 1);
        }
        (void)export_last_error(g_handle, buf, sizeof buf);
        (void)export_last_error_json(g_handle, buf, sizeof buf);
        (void)export_manifest(g_handle, buf, sizeof buf);
        (void)export_files_json(g_handle, buf, sizeof buf);
        (void)export_checkpoint(g_handle, buf, sizeof buf);
        if (id == 0 && atomic_load(&g_calls) > 2000) {
            s = export_cancel(g_handle); /* any thread may cancel */
            if (s != FHIRBULK_OK && s != FHIRBULK_ERR_INVALID_HANDLE) atomic_store(&g_bad_status, s);
        }
        /* A consuming call from a non-consumer thread: a record, BUSY, or a terminal status. */
        FhirbulkRecord r;
        s = export_next_record(g_handle, 0, &r);
        if (s == FHIRBULK_ERR_INTERNAL) atomic_store(&g_bad_status, s);
        atomic_fetch_add(&g_calls, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    test_begin("test_threads", 120);
    CHECK(argc == 2, "usage: %s SANDBOX_ROOT_URL", argv[0]);
    const char *root = argv[1];

    g_handle = start_export(
        "{\"base_url\": \"%s/x/slow=20/fhir\", \"level\": \"group\", \"group_id\": \"g1\","
        " \"poll_min_ms\": 10, \"poll_max_ms\": 100}",
        root);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, hammer, (void *)i) == 0, "thread");

    /* The consumer: pulls until the cancel from thread 0 lands. */
    long records = 0;
    FhirbulkStatus s;
    FhirbulkRecord rec;
    for (;;) {
        s = export_next_record(g_handle, 50, &rec);
        if (s == FHIRBULK_RECORD) records++;
        else if (s == FHIRBULK_TIMEOUT || s == FHIRBULK_ERR_BUSY) continue;
        else break;
    }
    CHECK(s == FHIRBULK_CANCELLED || s == FHIRBULK_END, "consumer ended with %s", fhirbulk_status_name(s));

    /* Free while the others keep calling. */
    atomic_store(&g_freed, 1);
    CHECK_STATUS(export_free(g_handle), FHIRBULK_OK);
    sleep_ms(200);
    atomic_store(&g_stop, 1);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);

    CHECK(atomic_load(&g_bad_status) == 0, "a call returned %s", fhirbulk_status_name(atomic_load(&g_bad_status)));
    CHECK(atomic_load(&g_invalid_after_free) > 0, "calls after free saw INVALID_HANDLE");
    CHECK_STATUS(export_free(g_handle), FHIRBULK_ERR_INVALID_HANDLE);
    printf("      %ld calls from %d threads, %ld records, %ld INVALID_HANDLE after free\n",
           atomic_load(&g_calls), THREADS, records, atomic_load(&g_invalid_after_free));
    return test_finish();
}
