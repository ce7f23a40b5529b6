/*
 * bench/measure.c: runs a command and writes what it cost (bench/run.py builds and uses it).
 *
 *   measure OUT_JSON CMD [ARGS...]
 *
 * Runs CMD (stdin, stdout and stderr inherited), waits for it with wait4 and writes one JSON
 * object to OUT_JSON: exit status, wall seconds, CPU seconds (user, sys: the child and every
 * thread of it) and peak RSS (ru_maxrss, KB). Exits with the child's status (128 + signal).
 *
 * Why a program of its own: Linux counts in ru_maxrss the resident size of the process image
 * that forked the child (a Python driver's 10-20 MB), kept across exec. This wrapper is small
 * (about 1 MB resident), so a row's peak RSS is the measured program's.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double secs(struct timeval tv) {
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: measure OUT_JSON CMD [ARGS...]\n");
        return 2;
    }
    double t0 = mono();
    pid_t pid = fork();
    if (pid < 0) {
        perror("measure: fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror("measure: exec");
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("measure: wait4");
        return 2;
    }
    double wall = mono() - t0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    FILE *f = fopen(argv[1], "w");
    if (!f) {
        perror("measure: open OUT_JSON");
        return 2;
    }
    fprintf(f,
            "{\"exit\":%d,\"seconds\":%.6f,\"user_s\":%.6f,\"sys_s\":%.6f,\"maxrss_kb\":%ld}\n",
            code, wall, secs(ru.ru_utime), secs(ru.ru_stime), ru.ru_maxrss);
    fclose(f);
    return code;
}
