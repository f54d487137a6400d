/*
 * forkfail: an LD_PRELOAD shim that makes fork() fail on a schedule, in ONE process.
 *
 * Why a shim: pyspark's daemon forks one worker per connection, and its fork-failure paths
 * (retry once after 1 s on EAGAIN/EINTR, die on a second failure, write the errno where a pid
 * belongs otherwise) can only be reached if fork() really fails. As root, RLIMIT_NPROC is not
 * enforced, so limits cannot do it; interposing fork() can.
 *
 * CPython's os.fork() (3.11, libpython3.11.so) calls fork() through the PLT (it imports
 * fork@GLIBC_2.2.5), so defining fork() here is enough; glibc's _Fork and clone are not used by
 * os.fork. CPython saves errno right after fork() returns, so the errno set here is the one
 * OSError carries.
 *
 * Only the process that loaded the shim is affected: its pid is taken at load time and forks in
 * any other pid (the daemon's forked workers, which inherit the mapping) go straight to libc.
 * The shim also removes itself from LD_PRELOAD at load, so nothing the process execs loads it.
 *
 * Environment (read once, at load):
 *   FAKEJVM_FORKFAIL_WHEN   "every" | "nth:1,2,5" (1-based fork ordinals) | "random:<p>:<seed>"
 *                           (fail with probability p in [0,1], deterministic for a seed)
 *   FAKEJVM_FORKFAIL_ERRNO  the errno to fail with, as a number (default 11, EAGAIN)
 *   FAKEJVM_FORKFAIL_LOG    optional file; one line is appended per fork() call:
 *                           "fork <n> pid <p> ok child <c> at <ms>" or
 *                           "fork <n> pid <p> failed errno <e> injected at <ms>" (<ms>: wall clock, ms
 *                           since the epoch), plus "loaded pid <p> when <...> errno <e> at <ms>" at load.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAX_NTH 64

enum when { WHEN_NEVER, WHEN_EVERY, WHEN_NTH, WHEN_RANDOM };

static pid_t target_pid;
static enum when when = WHEN_NEVER;
static unsigned long nth[MAX_NTH];
static int n_nth;
static double probability;
static uint64_t rng_state;
static int fail_errno = EAGAIN;
static char log_path[4096];
static unsigned long forks_seen;
static pid_t (*real_fork)(void);

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void log_line(const char *line) {
    if (!log_path[0]) return;
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    ssize_t ignored = write(fd, line, strlen(line));
    (void)ignored;
    close(fd);
}

/* splitmix64: a tiny, well-mixed generator; the schedule only needs to be repeatable. */
static uint64_t next_random(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int should_fail(unsigned long ordinal) {
    switch (when) {
    case WHEN_EVERY:
        return 1;
    case WHEN_NTH:
        for (int i = 0; i < n_nth; i++)
            if (nth[i] == ordinal) return 1;
        return 0;
    case WHEN_RANDOM:
        return (double)(next_random() >> 11) / (double)(1ull << 53) < probability;
    default:
        return 0;
    }
}

static void parse_when(const char *s) {
    if (!s || !*s) return;
    if (strcmp(s, "every") == 0) {
        when = WHEN_EVERY;
    } else if (strncmp(s, "nth:", 4) == 0) {
        when = WHEN_NTH;
        const char *p = s + 4;
        while (*p && n_nth < MAX_NTH) {
            char *end;
            unsigned long v = strtoul(p, &end, 10);
            if (end == p) break;
            nth[n_nth++] = v;
            p = (*end == ',') ? end + 1 : end;
        }
    } else if (strncmp(s, "random:", 7) == 0) {
        when = WHEN_RANDOM;
        char *end;
        probability = strtod(s + 7, &end);
        rng_state = (*end == ':') ? strtoull(end + 1, NULL, 10) : 0;
    }
}

/* Removes every LD_PRELOAD entry that names this shim (entries are separated by ':' or ' '). */
static void drop_self_from_ld_preload(void) {
    const char *cur = getenv("LD_PRELOAD");
    if (!cur) return;
    char out[8192];
    size_t used = 0;
    const char *p = cur;
    while (*p) {
        size_t len = strcspn(p, ": ");
        int ours = len >= 14 && memmem(p, len, "libforkfail", 11) != NULL;
        if (len > 0 && !ours && used + len + 2 < sizeof out) {
            if (used) out[used++] = ':';
            memcpy(out + used, p, len);
            used += len;
        }
        p += len;
        if (*p) p++;
    }
    out[used] = 0;
    if (used) setenv("LD_PRELOAD", out, 1);
    else unsetenv("LD_PRELOAD");
}

__attribute__((constructor)) static void forkfail_init(void) {
    target_pid = getpid();
    real_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
    parse_when(getenv("FAKEJVM_FORKFAIL_WHEN"));
    const char *e = getenv("FAKEJVM_FORKFAIL_ERRNO");
    if (e && *e) fail_errno = atoi(e);
    const char *l = getenv("FAKEJVM_FORKFAIL_LOG");
    if (l && strlen(l) < sizeof log_path) strcpy(log_path, l);
    drop_self_from_ld_preload();
    char line[256];
    snprintf(line, sizeof line, "loaded pid %d when %s errno %d at %lld\n", (int)target_pid,
             getenv("FAKEJVM_FORKFAIL_WHEN") ? getenv("FAKEJVM_FORKFAIL_WHEN") : "never", fail_errno, now_ms());
    log_line(line);
}

pid_t fork(void) {
    if (!real_fork) real_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
    if (getpid() != target_pid) return real_fork();

    unsigned long ordinal = __atomic_add_fetch(&forks_seen, 1, __ATOMIC_SEQ_CST);
    char line[256];
    if (should_fail(ordinal)) {
        snprintf(line, sizeof line, "fork %lu pid %d failed errno %d injected at %lld\n", ordinal, (int)target_pid, fail_errno,
                 now_ms());
        log_line(line);
        errno = fail_errno;
        return -1;
    }
    pid_t child = real_fork();
    if (child > 0) {
        snprintf(line, sizeof line, "fork %lu pid %d ok child %d at %lld\n", ordinal, (int)target_pid, (int)child, now_ms());
        log_line(line);
    } else if (child < 0) {
        int saved = errno;
        snprintf(line, sizeof line, "fork %lu pid %d failed errno %d real at %lld\n", ordinal, (int)target_pid, saved, now_ms());
        log_line(line);
        errno = saved;
    }
    return child;
}
