/*
 * bench/waiting.c: what exports cost while they wait (bench/run.py builds and runs it).
 *
 *   waiting BASE_URL --exports N [--type TYPE] [--timeout-s S]
 *
 * Starts N exports of BASE_URL in this one process through libfhirbulk's C ABI (export_start),
 * then polls them (export_poll) until every one has had an answer to a status request and
 * waits for the next one (FHIRBULK_STATE_WAITING, polls >= 1). BASE_URL should keep them
 * waiting: a sandbox scenario such as /x/polls=1000000;retry_after=600/fhir (202 "in
 * progress" with Retry-After: 600, far longer than the measurement). Then it samples its own
 * /proc/self/status (Threads, VmRSS, VmHWM), cancels every export (export_cancel), frees them
 * all (export_free) and prints one JSON object: the samples before any export, while all N
 * wait, and after the last export_free, plus the time to start them all, to see them all
 * waiting, to cancel and to free.
 *
 * Exits 1 when an export fails, ends, or is not waiting within --timeout-s (default 120).
 */
#define _POSIX_C_SOURCE 200809L

#include "fhirbulk.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct sample {
    long threads, rss_kb, hwm_kb;
};

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static struct sample self_status(void) {
    struct sample s = {-1, -1, -1};
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return s;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "Threads: %ld", &s.threads);
        sscanf(line, "VmRSS: %ld kB", &s.rss_kb);
        sscanf(line, "VmHWM: %ld kB", &s.hwm_kb);
    }
    fclose(f);
    return s;
}

static void print_sample(const char *name, struct sample s, const char *sep) {
    printf("\"%s\":{\"threads\":%ld,\"rss_kb\":%ld,\"hwm_kb\":%ld}%s", name, s.threads, s.rss_kb,
           s.hwm_kb, sep);
}

static int usage(void) {
    fprintf(stderr, "usage: waiting BASE_URL --exports N [--type TYPE] [--timeout-s S]\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *base = argv[1];
    const char *type = "Patient";
    long n = 0;
    double timeout_s = 120;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--exports") && i + 1 < argc) {
            n = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--type") && i + 1 < argc) {
            type = argv[++i];
        } else if (!strcmp(argv[i], "--timeout-s") && i + 1 < argc) {
            timeout_s = atof(argv[++i]);
        } else {
            return usage();
        }
    }
    if (n < 1) return usage();
    FhirbulkExport **h = calloc((size_t)n, sizeof *h);
    if (!h) return 1;
    /* The first status poll right after the kick-off; the next one only when the server's
     * Retry-After says (up to poll_max_ms, the default 10 minutes). */
    char config[2048];
    snprintf(config, sizeof config,
             "{\"base_url\":\"%s\",\"types\":[\"%s\"],\"poll_min_ms\":10}", base, type);

    struct sample before = self_status();
    double t0 = mono();
    for (long i = 0; i < n; i++) {
        FhirbulkStatus st = export_start(config, &h[i]);
        if (st != FHIRBULK_OK) {
            char err[1024];
            export_last_error(NULL, err, sizeof err);
            fprintf(stderr, "export_start #%ld: %s %s\n", i, fhirbulk_status_name(st), err);
            return 1;
        }
    }
    double started = mono() - t0;

    int rc = 0;
    long waiting = 0;
    for (;;) {
        waiting = 0;
        for (long i = 0; i < n && !rc; i++) {
            FhirbulkProgress p;
            export_poll(h[i], &p);
            if (p.state == FHIRBULK_STATE_WAITING && p.polls >= 1) {
                waiting++;
            } else if (p.state != FHIRBULK_STATE_KICKING_OFF) {
                char err[1024];
                export_last_error(h[i], err, sizeof err);
                fprintf(stderr, "export #%ld is not waiting: state %u, %s\n", i, p.state, err);
                rc = 1;
            }
        }
        if (rc || waiting == n) break;
        if (mono() - t0 > timeout_s) {
            fprintf(stderr, "after %.0f s, %ld of %ld exports wait\n", timeout_s, waiting, n);
            rc = 1;
            break;
        }
        sleep_ms(10);
    }
    double all_waiting = mono() - t0;
    /* Let threads that were started for the kick-off and the first poll settle. */
    sleep_ms(200);
    struct sample during = self_status();

    double t1 = mono();
    for (long i = 0; i < n; i++) export_cancel(h[i]);
    double cancelled = mono() - t1;
    long not_cancelled = 0;
    for (long i = 0; i < n; i++) {
        FhirbulkProgress p;
        export_poll(h[i], &p);
        if (p.state != FHIRBULK_STATE_CANCELLED) not_cancelled++;
    }
    double t2 = mono();
    for (long i = 0; i < n; i++) export_free(h[i]);
    double freed = mono() - t2;
    free(h);
    sleep_ms(50);
    struct sample after = self_status();

    printf("{\"exports\":%ld,\"waiting\":%ld,\"not_cancelled_after_cancel\":%ld,", n, waiting,
           not_cancelled);
    print_sample("before", before, ",");
    print_sample("waiting_sample", during, ",");
    print_sample("after_free", after, ",");
    printf("\"start_s\":%.6f,\"all_waiting_s\":%.6f,\"cancel_s\":%.6f,\"free_s\":%.6f}\n", started,
           all_waiting, cancelled, freed);
    return rc;
}
