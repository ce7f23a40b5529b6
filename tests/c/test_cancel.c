/*
 * test_cancel: cancellation and concurrent consumers.
 *   - a consumer blocked in export_next_record(h, -1, ...) during slow downloads returns
 *     FHIRBULK_CANCELLED within 2 s of export_cancel from another thread; state CANCELLED
 *   - the same while the server is still preparing the files (202 polls)
 *   - cancel before pulling; export_free while a consumer is blocked
 *   - two threads pulling from one handle at once: each call either works or gets
 *     FHIRBULK_ERR_BUSY; together they see every record exactly once, and nothing crashes
 *
 * usage: test_cancel SERVER_ROOT BIG_SERVER_ROOT TRUTH_JSON
 *   SERVER_ROOT      sandbox with small files (http://127.0.0.1:PORT)
 *   BIG_SERVER_ROOT  sandbox with large files, so that slow=200 really throttles downloads
 *   TRUTH_JSON       SERVER_ROOT's /_sandbox/truth?level=group&group=g1 (all types)
 */
#include "test_util.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define FAST "\"poll_min_ms\": 10, \"poll_max_ms\": 200"
#define PROMPT_SECONDS 2.0

/* ---- one blocked consumer ------------------------------------------------------------------ */

typedef struct {
    FhirbulkExport *h;
    atomic_long records;
    atomic_int finished;
    FhirbulkStatus status; /* the first non-RECORD status */
    double returned_at;    /* when that call returned */
} Consumer;

static void *consume(void *arg) {
    Consumer *c = arg;
    FhirbulkRecord rec;
    FhirbulkStatus s;
    while ((s = export_next_record(c->h, -1, &rec)) == FHIRBULK_RECORD) {
        atomic_fetch_add(&c->records, 1);
    }
    c->returned_at = now_seconds();
    c->status = s;
    atomic_store(&c->finished, 1);
    return NULL;
}

static void start_consumer(Consumer *c, pthread_t *t, FhirbulkExport *h) {
    c->h = h;
    atomic_init(&c->records, 0);
    atomic_init(&c->finished, 0);
    c->status = -1;
    c->returned_at = 0;
    CHECK(pthread_create(t, NULL, consume, c) == 0, "pthread_create");
}

static uint32_t state_of(FhirbulkExport *h) {
    FhirbulkProgress p;
    CHECK_STATUS(export_poll(h, &p), FHIRBULK_OK);
    return p.state;
}

/* Wait up to `seconds` for `state` (or for the consumer to have `min_records`). */
static void wait_until(FhirbulkExport *h, Consumer *c, uint32_t state, long min_records,
                       double seconds) {
    double deadline = now_seconds() + seconds;
    while (now_seconds() < deadline) {
        if (state_of(h) == state && atomic_load(&c->records) >= min_records) return;
        CHECK(!atomic_load(&c->finished), "consumer ended (%d %s) before the cancel",
              (int)c->status, fhirbulk_status_name(c->status));
        sleep_ms(10);
    }
    FAIL("state %s / %ld records not reached within %.0f s (state %s, %ld records)",
         state_name(state), min_records, seconds, state_name(state_of(h)),
         atomic_load(&c->records));
}

/* Once a pull has returned FHIRBULK_CANCELLED, export_poll must say CANCELLED too. When it
 * lags, that is reported (a soft failure) and it must still get there within 2 s. */
static void check_cancelled_state(FhirbulkExport *h, const char *what) {
    uint32_t now = state_of(h);
    SOFT_CHECK(now == FHIRBULK_STATE_CANCELLED,
               "%s: a pull returned CANCELLED but export_poll says %s", what, state_name(now));
    double deadline = now_seconds() + PROMPT_SECONDS;
    while (state_of(h) != FHIRBULK_STATE_CANCELLED && now_seconds() < deadline) sleep_ms(10);
    CHECK(state_of(h) == FHIRBULK_STATE_CANCELLED, "%s: state %s 2 s after cancel", what,
          state_name(state_of(h)));
}

/* Cancel from this thread while the consumer is blocked; it must return CANCELLED promptly. */
static void cancel_blocked(FhirbulkExport *h, Consumer *c, pthread_t t, const char *what) {
    sleep_ms(300); /* let the consumer block in export_next_record */
    CHECK(!atomic_load(&c->finished), "%s: consumer ended (%d %s) before the cancel", what,
          (int)c->status, fhirbulk_status_name(c->status));
    double t0 = now_seconds();
    CHECK_STATUS(export_cancel(h), FHIRBULK_OK);
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    double waited = c->returned_at - t0;
    CHECK(c->status == FHIRBULK_CANCELLED, "%s: blocked consumer got %d (%s), expected cancelled",
          what, (int)c->status, fhirbulk_status_name(c->status));
    CHECK(waited < PROMPT_SECONDS, "%s: consumer woke %.3f s after export_cancel", what, waited);

    check_cancelled_state(h, what);
    /* Cancelled is sticky; cancelling again is harmless. */
    FhirbulkRecord rec;
    CHECK_STATUS(export_next_record(h, -1, &rec), FHIRBULK_CANCELLED);
    FhirbulkBatch b;
    CHECK_STATUS(export_next_batch(h, 10, -1, &b), FHIRBULK_CANCELLED);
    CHECK_STATUS(export_cancel(h), FHIRBULK_OK);
    double f0 = now_seconds();
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    double freed = now_seconds() - f0;
    CHECK(freed < PROMPT_SECONDS, "%s: export_free took %.3f s", what, freed);
    printf("  %s: woke %.0f ms after cancel (%ld records before), free %.0f ms\n", what,
           waited * 1000, atomic_load(&c->records), freed * 1000);
}

static void cancel_while_downloading(const char *big_root) {
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/x/slow=200/fhir\", \"level\": \"group\", \"group_id\": \"g1\", "
        "\"concurrency\": 2, " FAST "}",
        big_root);
    Consumer c;
    pthread_t t;
    start_consumer(&c, &t, h);
    wait_until(h, &c, FHIRBULK_STATE_DOWNLOADING, 1, 30);
    cancel_blocked(h, &c, t, "cancel while downloading (slow=200)");
}

static void cancel_while_waiting(const char *root) {
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/x/polls=100000;retry_after=1/fhir\", \"level\": \"system\", " FAST
        "}",
        root);
    Consumer c;
    pthread_t t;
    start_consumer(&c, &t, h);
    wait_until(h, &c, FHIRBULK_STATE_WAITING, 0, 30);
    cancel_blocked(h, &c, t, "cancel while the server prepares (polls)");
}

static void cancel_before_pulling(const char *root) {
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/x/polls=100000/fhir\", \"level\": \"system\", " FAST "}", root);
    CHECK_STATUS(export_cancel(h), FHIRBULK_OK);
    double t0 = now_seconds();
    FhirbulkRecord rec;
    CHECK_STATUS(export_next_record(h, -1, &rec), FHIRBULK_CANCELLED);
    CHECK(now_seconds() - t0 < PROMPT_SECONDS, "pull after cancel took %.3f s",
          now_seconds() - t0);
    check_cancelled_state(h, "cancel before pulling");
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    printf("  cancel before pulling: ok\n");
}

/* export_free while another thread is blocked pulling: free cancels, waits for that consumer
 * to return and joins the threads. */
static void free_while_blocked(const char *root) {
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/x/polls=100000/fhir\", \"level\": \"system\", " FAST "}", root);
    Consumer c;
    pthread_t t;
    start_consumer(&c, &t, h);
    wait_until(h, &c, FHIRBULK_STATE_WAITING, 0, 30);
    sleep_ms(200);
    double t0 = now_seconds();
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    double freed = now_seconds() - t0;
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    CHECK(c.status == FHIRBULK_CANCELLED || c.status == FHIRBULK_ERR_INVALID_HANDLE,
          "consumer blocked during export_free got %d (%s)", (int)c.status,
          fhirbulk_status_name(c.status));
    CHECK(freed < PROMPT_SECONDS, "export_free with a blocked consumer took %.3f s", freed);
    CHECK_STATUS(export_poll(h, &(FhirbulkProgress){0}), FHIRBULK_ERR_INVALID_HANDLE);
    printf("  free while blocked: consumer got %s, free %.0f ms\n",
           fhirbulk_status_name(c.status), freed * 1000);
}

/* ---- two consumers on one handle ------------------------------------------------------------ */

typedef struct {
    uint32_t file_index;
    uint64_t line;
} Seen;

typedef struct {
    FhirbulkExport *h;
    pthread_mutex_t *lock;
    Seen *seen;
    size_t *nseen;
    size_t cap;
    long records, busy, timeouts;
    FhirbulkStatus status;
} Racer;

static void *race(void *arg) {
    Racer *r = arg;
    FhirbulkRecord rec;
    for (;;) {
        /* Only the fields of `rec` (copied into our struct) are used: another thread's next
         * call may invalidate the borrowed data at any moment. */
        FhirbulkStatus s = export_next_record(r->h, 50, &rec);
        if (s == FHIRBULK_RECORD) {
            pthread_mutex_lock(r->lock);
            if (*r->nseen < r->cap) {
                r->seen[*r->nseen].file_index = rec.file_index;
                r->seen[*r->nseen].line = rec.line;
            }
            (*r->nseen)++;
            pthread_mutex_unlock(r->lock);
            r->records++;
        } else if (s == FHIRBULK_ERR_BUSY) {
            r->busy++;
            sched_yield();
        } else if (s == FHIRBULK_TIMEOUT) {
            r->timeouts++;
        } else {
            r->status = s;
            return NULL;
        }
    }
}

static int cmp_seen(const void *a, const void *b) {
    const Seen *x = a, *y = b;
    if (x->file_index != y->file_index) return x->file_index < y->file_index ? -1 : 1;
    if (x->line != y->line) return x->line < y->line ? -1 : 1;
    return 0;
}

static void two_consumers(const char *root, const char *truth) {
    long expected = truth_total(truth);
    CHECK(expected > 0, "bad truth %s", truth);
    FhirbulkExport *h = start_export(
        "{\"base_url\": \"%s/fhir\", \"level\": \"group\", \"group_id\": \"g1\", " FAST "}", root);
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    size_t cap = (size_t)expected + 1024, nseen = 0;
    Seen *seen = calloc(cap, sizeof *seen);
    CHECK(seen != NULL, "calloc");
    Racer r[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].h = h;
        r[i].lock = &lock;
        r[i].seen = seen;
        r[i].nseen = &nseen;
        r[i].cap = cap;
        CHECK(pthread_create(&t[i], NULL, race, &r[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < 2; i++) CHECK(pthread_join(t[i], NULL) == 0, "pthread_join");

    for (int i = 0; i < 2; i++) {
        if (r[i].status != FHIRBULK_END) {
            char detail[2048];
            export_last_error_json(h, detail, sizeof detail);
            FAIL("consumer %d ended with %d (%s): %s", i, (int)r[i].status,
                 fhirbulk_status_name(r[i].status), detail);
        }
    }
    CHECK(nseen <= cap, "far more records (%zu) than the truth (%ld)", nseen, expected);
    CHECK((long)nseen == expected, "two consumers saw %zu records, truth %ld", nseen, expected);
    qsort(seen, nseen, sizeof *seen, cmp_seen);
    for (size_t i = 1; i < nseen; i++) {
        CHECK(cmp_seen(&seen[i - 1], &seen[i]) != 0,
              "record (file %u, line %" PRIu64 ") delivered twice", seen[i].file_index,
              seen[i].line);
    }
    FhirbulkProgress p;
    CHECK_STATUS(export_poll(h, &p), FHIRBULK_OK);
    CHECK(p.records_delivered == (uint64_t)expected, "records_delivered %" PRIu64 ", expected %ld",
          p.records_delivered, expected);
    CHECK_STATUS(export_free(h), FHIRBULK_OK);
    free(seen);
    printf("  two consumers: %ld + %ld records, %ld + %ld busy\n", r[0].records, r[1].records,
           r[0].busy, r[1].busy);
}

int main(int argc, char **argv) {
    test_begin("test_cancel", 180);
    if (argc != 4) {
        fprintf(stderr, "usage: %s SERVER_ROOT BIG_SERVER_ROOT TRUTH_JSON\n", argv[0]);
        return 2;
    }
    const char *root = argv[1], *big_root = argv[2], *truth = argv[3];
    cancel_before_pulling(root);
    cancel_while_waiting(root);
    cancel_while_downloading(big_root);
    free_while_blocked(root);
    two_consumers(root, truth);
    return test_finish();
}
