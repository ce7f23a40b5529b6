/*
 * bench/consumer.c: the C consumer of the benchmark (bench/run.py builds and runs it).
 *
 *   consumer BASE_URL [--api batch|record|arrow] [--validate] [--concurrency N] [--slow-mbps N]
 *            [--event-queue N]   (the config's event_queue_size; events are never read here)
 *            [--ca-bundle PEM]
 *            [--chunk-bytes N] [--buffer-chunks N] [--type TYPE]
 *
 * Runs a system-level export of BASE_URL through libfhirbulk's C ABI and touches every byte of
 * every record (a running sum the compiler cannot drop). With --slow-mbps the consumer paces
 * itself to that many MB/s (a consumer slower than the network: memory must stay flat). Prints
 * one JSON object: records, bytes, seconds (export_start to END), the wall-clock time of the
 * first record (Unix microseconds, to compare with the sandbox's request log), CPU seconds
 * (user, sys: the whole process, the library's threads included) and peak RSS (VmHWM).
 */
#define _POSIX_C_SOURCE 200809L

#include "fhirbulk.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t unix_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t touch(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    return s;
}

static void pace(double start, uint64_t bytes, double mbps) {
    if (mbps <= 0) return;
    double due = start + (double)bytes / (mbps * 1e6);
    double now = mono();
    if (due > now) {
        double d = due - now;
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static int usage(void) {
    fprintf(stderr, "usage: consumer BASE_URL [--api batch|record|arrow] [--validate] [--concurrency N] "
                    "[--slow-mbps N] [--chunk-bytes N] [--buffer-chunks N] [--type TYPE] "
                    "[--ca-bundle PEM]\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *base = argv[1];
    int per_record = 0, arrow = 0, validate = 0, concurrency = 4;
    long chunk_bytes = 0, buffer_chunks = 0, event_queue = -1;
    const char *type = NULL, *ca_bundle = NULL;
    double slow_mbps = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--api") && i + 1 < argc) {
            i++;
            per_record = !strcmp(argv[i], "record");
            arrow = !strcmp(argv[i], "arrow");
        } else if (!strcmp(argv[i], "--validate")) {
            validate = 1;
        } else if (!strcmp(argv[i], "--concurrency") && i + 1 < argc) {
            concurrency = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--chunk-bytes") && i + 1 < argc) {
            chunk_bytes = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--buffer-chunks") && i + 1 < argc) {
            buffer_chunks = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--ca-bundle") && i + 1 < argc) {
            ca_bundle = argv[++i];
        } else if (!strcmp(argv[i], "--type") && i + 1 < argc) {
            type = argv[++i];
        } else if (!strcmp(argv[i], "--event-queue") && i + 1 < argc) {
            event_queue = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--slow-mbps") && i + 1 < argc) {
            slow_mbps = atof(argv[++i]);
        } else {
            return usage();
        }
    }
    char config[2048], extra[1024] = "";
    if (chunk_bytes > 0)
        snprintf(extra, sizeof extra, ",\"chunk_bytes\":%ld", chunk_bytes);
    if (buffer_chunks > 0)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ",\"buffer_chunks\":%ld",
                 buffer_chunks);
    if (event_queue >= 0)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ",\"event_queue_size\":%ld",
                 event_queue);
    if (type)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ",\"types\":[\"%s\"]",
                 type);
    if (ca_bundle)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ",\"ca_bundle\":\"%s\"",
                 ca_bundle);
    snprintf(config, sizeof config,
             "{\"base_url\":\"%s\",\"poll_min_ms\":10,\"concurrency\":%d,\"validate_json\":%s%s}",
             base, concurrency, validate ? "true" : "false", extra);

    double t0 = mono();
    FhirbulkExport *h = NULL;
    FhirbulkStatus st = export_start(config, &h);
    if (st != FHIRBULK_OK) {
        char err[1024];
        export_last_error(h, err, sizeof err);
        fprintf(stderr, "export_start: %d %s\n", st, err);
        return 1;
    }
    uint64_t records = 0, bytes = 0, sum = 0, first_us = 0;
    for (;;) {
        if (arrow) {
            /* Typed Arrow batches (export_next_arrow_batch): rows counted, buffers released. */
            struct ArrowArray a;
            struct ArrowSchema sc;
            char ty[64];
            st = export_next_arrow_batch(h, 8192, -1, &a, &sc, ty, sizeof ty);
            if (st != FHIRBULK_RECORD) break;
            if (!first_us) first_us = unix_us();
            records += (uint64_t)a.length;
            sum += (uint64_t)a.n_children;
            a.release(&a);
            sc.release(&sc);
        } else if (per_record) {
            FhirbulkRecord r;
            st = export_next_record(h, -1, &r);
            if (st != FHIRBULK_RECORD) break;
            if (!first_us) first_us = unix_us();
            records++;
            bytes += r.len + 1;
            sum += touch(r.data, r.len);
            if ((records & 1023) == 0) pace(t0, bytes, slow_mbps);
        } else {
            FhirbulkBatch b;
            st = export_next_batch(h, 4096, -1, &b);
            if (st != FHIRBULK_RECORD) break;
            if (!first_us) first_us = unix_us();
            records += b.count;
            bytes += b.data_len;
            sum += touch(b.data, b.data_len);
            pace(t0, bytes, slow_mbps);
        }
    }
    double secs = mono() - t0;
    if (st != FHIRBULK_END) {
        char err[1024];
        export_last_error(h, err, sizeof err);
        fprintf(stderr, "export failed: %d %s\n", st, err);
        export_free(h);
        return 1;
    }
    FhirbulkProgress p;
    export_poll(h, &p);
    export_free(h);
    if (arrow) bytes = p.bytes_downloaded; /* the NDJSON the batches came from */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    /* Peak RSS of this program's own address space: ru_maxrss would also count the parent's
     * image from before exec (a Python driver's, say). */
    long hwm_kb = -1;
    FILE *fs = fopen("/proc/self/status", "r");
    if (fs) {
        char line[256];
        while (fgets(line, sizeof line, fs))
            if (sscanf(line, "VmHWM: %ld kB", &hwm_kb) == 1) break;
        fclose(fs);
    }
    if (hwm_kb < 0) hwm_kb = ru.ru_maxrss;
    printf("{\"records\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"bytes_downloaded\":%" PRIu64
           ",\"seconds\":%.6f,\"first_record_unix_us\":%" PRIu64
           ",\"user_s\":%.6f,\"sys_s\":%.6f,\"maxrss_kb\":%ld,\"checksum\":%" PRIu64 "}\n",
           records, bytes, p.bytes_downloaded, secs, first_us,
           (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6, hwm_kb, sum);
    return 0;
}
