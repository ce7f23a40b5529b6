/*
 * Shared helpers for the C tests of libfhirbulk. Each test is its own program: exit status 0
 * means it passed; any failed check prints "FAIL file:line: ..." and exits 1.
 *
 * Include this first (it sets the feature macros the system headers need).
 */
#ifndef FHIRBULK_TEST_UTIL_H
#define FHIRBULK_TEST_UTIL_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "fhirbulk.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Name of the running test, set by test_begin() and used in every message. */
static const char *g_test_name = "test";
static int g_checks = 0;
static int g_soft_failures = 0;

static inline void test_begin(const char *name, unsigned watchdog_seconds) {
    g_test_name = name;
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* A hang (a consumer never woken, a join that never returns) must fail the test, not the CI
     * job: SIGALRM's default action kills the process with a non-zero status. */
    alarm(watchdog_seconds);
}

static inline void fail_at(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "FAIL %s %s:%d: ", g_test_name, file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

#define FAIL(...) fail_at(__FILE__, __LINE__, __VA_ARGS__)

/* CHECK(condition, "printf message", ...) */
#define CHECK(cond, ...)                                                                         \
    do {                                                                                         \
        g_checks++;                                                                              \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "FAIL %s %s:%d: check `%s` failed: ", g_test_name, __FILE__,         \
                    __LINE__, #cond);                                                            \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

/* SOFT_CHECK(condition, "printf message", ...): like CHECK, but the test goes on (so one
 * failure does not hide the next); test_finish() then fails the test. */
#define SOFT_CHECK(cond, ...)                                                                    \
    do {                                                                                         \
        g_checks++;                                                                              \
        if (!(cond)) {                                                                           \
            g_soft_failures++;                                                                   \
            fprintf(stderr, "FAIL %s %s:%d: check `%s` failed: ", g_test_name, __FILE__,         \
                    __LINE__, #cond);                                                            \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
        }                                                                                        \
    } while (0)

/* CHECK_STATUS(call, FHIRBULK_X): the call must return exactly that status. */
#define CHECK_STATUS(expr, expected)                                                             \
    do {                                                                                         \
        FhirbulkStatus got_ = (expr);                                                            \
        FhirbulkStatus want_ = (expected);                                                       \
        g_checks++;                                                                              \
        if (got_ != want_) {                                                                     \
            char msg_[512];                                                                      \
            export_last_error(NULL, msg_, sizeof msg_);                                          \
            fprintf(stderr,                                                                      \
                    "FAIL %s %s:%d: `%s` returned %d (%s), expected %d (%s); "                   \
                    "thread's last error: \"%s\"\n",                                             \
                    g_test_name, __FILE__, __LINE__, #expr, (int)got_,                           \
                    fhirbulk_status_name(got_), (int)want_, fhirbulk_status_name(want_), msg_);  \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

static inline double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Expected count of `type` from the sandbox's /_sandbox/truth JSON ({"Patient":50,...}), found
 * with a minimal scan. -1 when the type is absent. */
static inline long truth_count(const char *truth_json, const char *type) {
    char key[128];
    snprintf(key, sizeof key, "\"%s\"", type);
    const char *p = strstr(truth_json, key);
    if (p == NULL) return -1;
    p += strlen(key);
    while (*p == ' ' || *p == ':') p++;
    char *end = NULL;
    long v = strtol(p, &end, 10);
    return end == p ? -1 : v;
}

/* Total of all counts in the truth JSON. */
static inline long truth_total(const char *truth_json) {
    long total = 0;
    const char *p = truth_json;
    while ((p = strchr(p, ':')) != NULL) {
        p++;
        while (*p == ' ') p++;
        total += strtol(p, NULL, 10);
    }
    return total;
}

/* The handle's last error message in a static buffer (for failure messages). */
static inline const char *last_error_of(const FhirbulkExport *h) {
    static char buf[2048];
    buf[0] = '\0';
    export_last_error(h, buf, sizeof buf);
    return buf;
}

/* Start an export from a printf-formatted config; fails the test when it does not start. */
static inline FhirbulkExport *start_export(const char *fmt, ...) {
    char cfg[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cfg, sizeof cfg, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof cfg) FAIL("config too long");
    FhirbulkExport *h = NULL;
    FhirbulkStatus s = export_start(cfg, &h);
    if (s != FHIRBULK_OK || h == NULL) {
        FAIL("export_start(%s) returned %d (%s): %s", cfg, (int)s, fhirbulk_status_name(s),
             last_error_of(NULL));
    }
    return h;
}

static inline const char *state_name(uint32_t state) {
    switch (state) {
    case FHIRBULK_STATE_KICKING_OFF: return "KICKING_OFF";
    case FHIRBULK_STATE_WAITING: return "WAITING";
    case FHIRBULK_STATE_DOWNLOADING: return "DOWNLOADING";
    case FHIRBULK_STATE_DONE: return "DONE";
    case FHIRBULK_STATE_FAILED: return "FAILED";
    case FHIRBULK_STATE_CANCELLED: return "CANCELLED";
    default: return "?";
    }
}

/* The exit status of the test: 0 when every check held. */
static inline int test_finish(void) {
    if (g_soft_failures > 0) {
        fprintf(stderr, "FAIL %s: %d of %d checks failed\n", g_test_name, g_soft_failures,
                g_checks);
        return 1;
    }
    printf("PASS %s (%d checks)\n", g_test_name, g_checks);
    return 0;
}

#endif /* FHIRBULK_TEST_UTIL_H */
