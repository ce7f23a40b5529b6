/*
 * bench/multi.c: several exports downloading at once in one process (bench/run.py builds and
 * runs it).
 *
 *   multi BASE_URL --exports N [--concurrency N] [--type TYPE]
 *
 * Starts N system-level exports of BASE_URL through libfhirbulk's C ABI and consumes each on
 * a thread of its own (export_next_batch, touching every byte), all at the same time. The main
 * thread samples /proc/self/status every 10 ms meanwhile. Prints one JSON object: records and
 * bytes per export, wall seconds (the first export_start to the last END), CPU seconds (user,
 * sys: the whole process), the most threads seen and the peak RSS (VmHWM).
 */
#define _POSIX_C_SOURCE 200809L

#include "fhirbulk.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

struct job {
    FhirbulkExport *h;
    uint64_t records, bytes, sum;
    double seconds;
    int ok;
    char err[512];
};

static atomic_long running;
static double t0;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t touch(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    return s;
}

static void *consume(void *arg) {
    struct job *j = arg;
    FhirbulkBatch b;
    FhirbulkStatus st;
    while ((st = export_next_batch(j->h, 4096, -1, &b)) == FHIRBULK_RECORD) {
        j->records += b.count;
        j->bytes += b.data_len;
        j->sum += touch(b.data, b.data_len);
    }
    j->seconds = mono() - t0;
    j->ok = st == FHIRBULK_END;
    if (!j->ok) {
        int n = snprintf(j->err, sizeof j->err, "%s: ", fhirbulk_status_name(st));
        export_last_error(j->h, j->err + n, sizeof j->err - (size_t)n);
    }
    atomic_fetch_sub(&running, 1);
    return NULL;
}

static void self_status(long *threads, long *rss_kb, long *hwm_kb) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (threads) sscanf(line, "Threads: %ld", threads);
        if (rss_kb) sscanf(line, "VmRSS: %ld kB", rss_kb);
        if (hwm_kb) sscanf(line, "VmHWM: %ld kB", hwm_kb);
    }
    fclose(f);
}

static int usage(void) {
    fprintf(stderr, "usage: multi BASE_URL --exports N [--concurrency N] [--type TYPE]\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *base = argv[1];
    const char *type = NULL;
    long n = 0;
    int concurrency = 4;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--exports") && i + 1 < argc) {
            n = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--concurrency") && i + 1 < argc) {
            concurrency = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--type") && i + 1 < argc) {
            type = argv[++i];
        } else {
            return usage();
        }
    }
    if (n < 1) return usage();
    char config[2048], types[256] = "";
    if (type) snprintf(types, sizeof types, ",\"types\":[\"%s\"]", type);
    snprintf(config, sizeof config,
             "{\"base_url\":\"%s\",\"poll_min_ms\":10,\"concurrency\":%d%s}", base, concurrency,
             types);

    struct job *jobs = calloc((size_t)n, sizeof *jobs);
    pthread_t *tids = calloc((size_t)n, sizeof *tids);
    if (!jobs || !tids) return 1;
    atomic_store(&running, n);
    t0 = mono();
    for (long i = 0; i < n; i++) {
        FhirbulkStatus st = export_start(config, &jobs[i].h);
        if (st != FHIRBULK_OK) {
            char err[1024];
            export_last_error(NULL, err, sizeof err);
            fprintf(stderr, "export_start #%ld: %s %s\n", i, fhirbulk_status_name(st), err);
            return 1;
        }
    }
    for (long i = 0; i < n; i++) {
        if (pthread_create(&tids[i], NULL, consume, &jobs[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    long peak_threads = 0, peak_rss_kb = 0;
    while (atomic_load(&running) > 0) {
        long threads = 0, rss = 0;
        self_status(&threads, &rss, NULL);
        if (threads > peak_threads) peak_threads = threads;
        if (rss > peak_rss_kb) peak_rss_kb = rss;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (long i = 0; i < n; i++) pthread_join(tids[i], NULL);
    double secs = mono() - t0;
    int rc = 0;
    for (long i = 0; i < n; i++) {
        if (!jobs[i].ok) {
            fprintf(stderr, "export #%ld failed: %s\n", i, jobs[i].err);
            rc = 1;
        }
        export_free(jobs[i].h);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long hwm_kb = -1;
    self_status(NULL, NULL, &hwm_kb);
    uint64_t records = 0, bytes = 0, sum = 0;
    printf("{\"exports\":%ld,\"per_export\":[", n);
    for (long i = 0; i < n; i++) {
        records += jobs[i].records;
        bytes += jobs[i].bytes;
        sum += jobs[i].sum;
        printf("%s{\"records\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"seconds\":%.6f}", i ? "," : "",
               jobs[i].records, jobs[i].bytes, jobs[i].seconds);
    }
    printf("],\"records\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"seconds\":%.6f,\"user_s\":%.6f"
           ",\"sys_s\":%.6f,\"peak_threads\":%ld,\"peak_rss_sampled_kb\":%ld,\"maxrss_kb\":%ld"
           ",\"checksum\":%" PRIu64 "}\n",
           records, bytes, secs, (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6, peak_threads,
           peak_rss_kb, hwm_kb, sum);
    free(jobs);
    free(tids);
    return rc;
}
