/*
 * forkfail: an LD_PRELOAD shim that fails system calls on a schedule, in chosen processes: the
 * daemon's fork() (where it started), a worker's send/write and recv/read on its socket, close,
 * the daemon's accept and select/poll. It can also stop (or stall) a forked child right after
 * fork(), before it writes its pid, and start a process with its low descriptors all taken.
 *
 * Why a shim: pyspark's daemon forks one worker per connection, and its fork-failure paths
 * (retry once after 1 s on EAGAIN/EINTR, die on a second failure, write the errno where a pid
 * belongs otherwise) can only be reached if fork() really fails. As root, RLIMIT_NPROC is not
 * enforced, so limits cannot do it; interposing fork() can. The same holds for a worker's write
 * failing with EPIPE or ENOSPC while its connection is fine: nothing outside the process can
 * make that happen.
 *
 * CPython 3.11 calls all of these through the PLT (libpython: fork, read, write, close; _socket:
 * send, sendto, sendmsg, recv, recvfrom, recvmsg, accept, accept4, poll; select: select, poll),
 * so defining them here is enough. CPython saves errno right after each call, so the errno set
 * here is the one OSError carries. A daemon's forked worker talks through os.fdopen'd files
 * (read/write); a direct worker through socket.makefile (send/recv): both are covered, and only
 * socket descriptors (fstat S_ISSOCK) count for send/recv/close, so the worker's own files,
 * pipes and stderr are untouched. Note CPython retries EINTR itself (PEP 475): an injected EINTR
 * is only seen as a retried call.
 *
 * Processes: the loading process is the daemon (FAKEJVM_SHIM_ROLE unset or "daemon") or a direct
 * worker ("worker"). A child the daemon forks is a worker; a child of anything else (a UDF's own
 * pool) is neither, and no rule applies there. fork() failures apply to the loading process only.
 * Counters (call ordinals, bytes) are per process, from its start or from its fork; a vfork child
 * (subprocess) shares our memory, so calls are only counted in the pid the state belongs to.
 * The shim removes itself from LD_PRELOAD at load, so nothing the process execs loads it.
 *
 * Environment (read once, at load):
 *   FAKEJVM_FORKFAIL_WHEN   "every" | "nth:1,2,5" (1-based fork ordinals) | "random:<p>:<seed>"
 *                           (fail with probability p in [0,1], deterministic for a seed)
 *   FAKEJVM_FORKFAIL_ERRNO  the errno to fail fork() with, as a number (default 11, EAGAIN)
 *   FAKEJVM_SHIM_ROLE       "daemon" (default) or "worker"
 *   FAKEJVM_SHIM_CALLS      rules separated by ';', each "<process> <call> <errno> <schedule>":
 *                           process "daemon" | "worker" | "worker@<t>" (only the worker of task t,
 *                           see FAKEJVM_SHIM_TASK_FILE); call "send" | "recv" | "close" |
 *                           "accept" | "select" | "poll"; schedule "nth:3,5" (1-based ordinals of
 *                           that call in the process) | "bytes:<n>" (every send/recv once n bytes
 *                           went through; the call that would cross n is shortened to end at n) |
 *                           "bytes:<n>:<k>" (the same, but only the first k calls from there fail:
 *                           a transient failure at a byte position) | "random:<p>:<seed>". A failed
 *                           close still closes (as Linux does).
 *   FAKEJVM_SHIM_TASK_FILE  a file holding the number of the task fakejvm is starting (it rewrites
 *                           it before each task connects); a worker reads it once, a daemon's child
 *                           right after fork(), a direct worker at load, and takes the rules tagged
 *                           with that task (a reused worker keeps the task it was forked for)
 *   FAKEJVM_SHIM_HOLD       "<n> stop" or "<n> stall <ms>": the child of the daemon's fork n
 *                           SIGSTOPs itself, or sleeps ms, before returning from fork()
 *   FAKEJVM_SHIM_FILL_FDS   n: at load, every free descriptor 3..n-1 is opened on /dev/null
 *                           (without O_CLOEXEC, so forks inherit them): new ones get numbers >= n
 *   FAKEJVM_FORKFAIL_LOG    optional file; one line is appended per event (<ms>: wall clock, ms
 *                           since the epoch; <pid> the process the line is about):
 *     "loaded pid <p> role <daemon|worker> when <...> errno <e> at <ms>"
 *     "fork <n> pid <p> ok child <c> at <ms>" | "fork <n> pid <p> failed errno <e> injected at <ms>"
 *     "call <call> <n> pid <p> fd <fd> via <function> failed errno <e> injected after <bytes> rule <k> at <ms>"
 *     "call <call> <n> pid <p> fd <fd> via <function> shortened <len> to <len2> rule <k> at <ms>"
 *     "child <n> pid <p> stop at <ms>" | "child <n> pid <p> stall <ms> at <ms>" | "child <n> pid <p> resumed at <ms>"
 *     "fill pid <p> below <n> opened <k> failed <f> at <ms>"
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAX_NTH 64
#define MAX_RULES 16

enum when { WHEN_NEVER, WHEN_EVERY, WHEN_NTH, WHEN_RANDOM, WHEN_BYTES };

/* What a failure schedule says: shared by fork() and the call rules. */
struct schedule {
    enum when when;
    unsigned long nth[MAX_NTH];
    int n_nth;
    double probability;
    uint64_t seed, rng_state;
    unsigned long long bytes;
    unsigned long max_fails; /* WHEN_BYTES: 0 = every call from there on, else only that many */
    unsigned long fails;     /* calls failed so far by this schedule, in this process */
};

enum who { WHO_DAEMON, WHO_WORKER, WHO_OTHER };
enum call { CALL_SEND, CALL_RECV, CALL_CLOSE, CALL_ACCEPT, CALL_SELECT, CALL_POLL, N_CALLS };
static const char *const call_names[N_CALLS] = {"send", "recv", "close", "accept", "select", "poll"};

struct rule {
    enum who process;
    long task; /* < 0: every worker; else only the worker of that task */
    enum call call;
    int err;
    struct schedule sched;
};

static pid_t target_pid; /* the loading process: its fork() may fail */
static pid_t my_pid;     /* the process `who` and the counters below describe */
static enum who who = WHO_DAEMON;
static struct schedule fork_sched;
static int fail_errno = EAGAIN;
static char log_path[4096];
static unsigned long forks_seen;
static struct rule rules[MAX_RULES];
static int n_rules;
static unsigned long calls_seen[N_CALLS];
static unsigned long long bytes_seen[N_CALLS];
static unsigned long hold_fork; /* 0: no child is held */
static long hold_stall_ms;      /* < 0: SIGSTOP */
static char task_path[4096];
static long current_task = -1; /* the task this worker was started for, from task_path */

static pid_t (*real_fork)(void);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static int (*real_close)(int);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static int (*real_select)(int, fd_set *, fd_set *, fd_set *, struct timeval *);
static int (*real_poll)(struct pollfd *, nfds_t, int);

#define RESOLVE(name)                                                                              \
    do {                                                                                           \
        if (!real_##name) real_##name = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name);          \
    } while (0)

static void resolve_all(void) {
    RESOLVE(fork);
    RESOLVE(write);
    RESOLVE(read);
    RESOLVE(send);
    RESOLVE(sendto);
    RESOLVE(sendmsg);
    RESOLVE(recv);
    RESOLVE(recvfrom);
    RESOLVE(recvmsg);
    RESOLVE(close);
    RESOLVE(accept);
    RESOLVE(accept4);
    RESOLVE(select);
    RESOLVE(poll);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Through the real calls: the log is no socket, but our own writes must never be counted. */
static void log_line(const char *line) {
    if (!log_path[0]) return;
    resolve_all();
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    ssize_t ignored = real_write(fd, line, strlen(line));
    (void)ignored;
    real_close(fd);
}

/* splitmix64: a tiny, well-mixed generator; the schedule only needs to be repeatable. */
static uint64_t next_random(struct schedule *s) {
    uint64_t z = (s->rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int should_fail(struct schedule *s, unsigned long ordinal) {
    switch (s->when) {
    case WHEN_EVERY:
        return 1;
    case WHEN_NTH:
        for (int i = 0; i < s->n_nth; i++)
            if (s->nth[i] == ordinal) return 1;
        return 0;
    case WHEN_RANDOM:
        return (double)(next_random(s) >> 11) / (double)(1ull << 53) < s->probability;
    default:
        return 0;
    }
}

/* "every" | "nth:1,2" | "random:<p>:<seed>" | "bytes:<n>"; returns the text after it. */
static const char *parse_schedule(const char *s, struct schedule *out) {
    memset(out, 0, sizeof *out);
    if (!s || !*s) return s;
    char *end = (char *)s;
    if (strncmp(s, "every", 5) == 0) {
        out->when = WHEN_EVERY;
        end = (char *)s + 5;
    } else if (strncmp(s, "nth:", 4) == 0) {
        out->when = WHEN_NTH;
        const char *p = s + 4;
        while (*p && out->n_nth < MAX_NTH) {
            unsigned long v = strtoul(p, &end, 10);
            if (end == p) break;
            out->nth[out->n_nth++] = v;
            p = end;
            if (*p != ',') break;
            p++;
        }
        end = (char *)p;
    } else if (strncmp(s, "random:", 7) == 0) {
        out->when = WHEN_RANDOM;
        out->probability = strtod(s + 7, &end);
        if (*end == ':') out->seed = strtoull(end + 1, &end, 10);
        out->rng_state = out->seed;
    } else if (strncmp(s, "bytes:", 6) == 0) {
        out->when = WHEN_BYTES;
        out->bytes = strtoull(s + 6, &end, 10);
        if (*end == ':') out->max_fails = strtoul(end + 1, &end, 10);
    }
    return end;
}

static int parse_word(const char **p, const char *const *words, int n) {
    while (**p == ' ') (*p)++;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(words[i]);
        if (strncmp(*p, words[i], len) == 0 && ((*p)[len] == ' ' || (*p)[len] == 0)) {
            *p += len;
            return i;
        }
    }
    return -1;
}

/* Rules "<process> <call> <errno> <schedule>" separated by ';'. A rule that does not parse is
 * skipped; fakejvm writes only well-formed ones, and the report says when nothing fired. */
static void parse_rules(const char *s) {
    static const char *const procs[] = {"daemon", "worker"};
    while (s && *s && n_rules < MAX_RULES) {
        const char *p = s;
        long task = -1;
        int proc;
        while (*p == ' ') p++;
        if (strncmp(p, "worker@", 7) == 0) {
            char *after;
            task = strtol(p + 7, &after, 10);
            proc = after != p + 7 && task >= 0 && (*after == ' ' || *after == 0) ? 1 : -1;
            p = after;
        } else {
            proc = parse_word(&p, procs, 2);
        }
        int call = parse_word(&p, call_names, N_CALLS);
        char *end;
        long err = strtol(p, &end, 10);
        struct rule r = {.process = proc == 1 ? WHO_WORKER : WHO_DAEMON, .task = task, .call = (enum call)call, .err = (int)err};
        const char *sched = end;
        while (*sched == ' ') sched++;
        parse_schedule(sched, &r.sched);
        if (proc >= 0 && call >= 0 && end != p && err > 0 && r.sched.when != WHEN_NEVER) rules[n_rules++] = r;
        s = strchr(s, ';');
        if (s) s++;
    }
}

static int is_socket(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

static int rule_applies(const struct rule *r, enum call c) {
    if (r->sched.when == WHEN_BYTES && r->sched.max_fails && r->sched.fails >= r->sched.max_fails) return 0;
    return r->call == c && r->process == who && (r->task < 0 || r->task == current_task);
}

/* Decides one call: 0 to go on (with *len possibly shortened so that a "bytes:<n>" schedule ends
 * exactly at n), or the errno to fail with (the failure is logged). `len` is NULL for calls that
 * move no bytes. *counted is set when the call is one the rules count (a socket's, in the
 * process the counters belong to): only its bytes may go into the byte counts, or a worker's
 * file reads (imports) and stderr writes would move a byte schedule off the socket's bytes. */
static int decide(enum call c, int fd, size_t *len, const char *via, int *counted) {
    *counted = 0;
    int any = 0;
    for (int i = 0; i < n_rules; i++) any |= rule_applies(&rules[i], c);
    if (!any || getpid() != my_pid) return 0;
    if ((c == CALL_SEND || c == CALL_RECV || c == CALL_CLOSE) && !is_socket(fd)) return 0;
    *counted = 1;
    unsigned long ordinal = __atomic_add_fetch(&calls_seen[c], 1, __ATOMIC_SEQ_CST);
    unsigned long long before = __atomic_load_n(&bytes_seen[c], __ATOMIC_SEQ_CST);
    char line[320];
    for (int i = 0; i < n_rules; i++) {
        struct rule *r = &rules[i];
        if (!rule_applies(r, c)) continue;
        int fail;
        if (r->sched.when == WHEN_BYTES) {
            fail = before >= r->sched.bytes;
            if (!fail && len && before + *len > r->sched.bytes) {
                size_t cut = (size_t)(r->sched.bytes - before);
                snprintf(line, sizeof line, "call %s %lu pid %d fd %d via %s shortened %zu to %zu rule %d at %lld\n",
                         call_names[c], ordinal, (int)my_pid, fd, via, *len, cut, i, now_ms());
                log_line(line);
                *len = cut;
            }
        } else {
            fail = should_fail(&r->sched, ordinal);
        }
        if (fail) {
            r->sched.fails++;
            snprintf(line, sizeof line, "call %s %lu pid %d fd %d via %s failed errno %d injected after %llu rule %d at %lld\n",
                     call_names[c], ordinal, (int)my_pid, fd, via, r->err, before, i, now_ms());
            log_line(line);
            return r->err;
        }
    }
    return 0;
}

static void count_bytes(enum call c, ssize_t n) {
    if (n > 0) __atomic_add_fetch(&bytes_seen[c], (unsigned long long)n, __ATOMIC_SEQ_CST);
}

/* One wrapper shape for every call that moves bytes on a socket. */
#define BYTES_CALL(c, name, fd, lenvar, call_expr)                                                 \
    do {                                                                                           \
        RESOLVE(name);                                                                             \
        size_t lenvar##_n = lenvar;                                                                \
        int counted;                                                                               \
        int e = decide(c, fd, &lenvar##_n, #name, &counted);                                       \
        if (e) {                                                                                   \
            errno = e;                                                                             \
            return -1;                                                                             \
        }                                                                                          \
        lenvar = lenvar##_n;                                                                       \
        ssize_t r = call_expr;                                                                     \
        if (counted) count_bytes(c, r);                                                            \
        return r;                                                                                  \
    } while (0)

ssize_t write(int fd, const void *buf, size_t count) {
    BYTES_CALL(CALL_SEND, write, fd, count, real_write(fd, buf, count));
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    BYTES_CALL(CALL_SEND, send, fd, len, real_send(fd, buf, len, flags));
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen) {
    BYTES_CALL(CALL_SEND, sendto, fd, len, real_sendto(fd, buf, len, flags, to, tolen));
}

ssize_t read(int fd, void *buf, size_t count) {
    BYTES_CALL(CALL_RECV, read, fd, count, real_read(fd, buf, count));
}

ssize_t recv(int fd, void *buf, size_t len, int flags) {
    BYTES_CALL(CALL_RECV, recv, fd, len, real_recv(fd, buf, len, flags));
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *fromlen) {
    BYTES_CALL(CALL_RECV, recvfrom, fd, len, real_recvfrom(fd, buf, len, flags, from, fromlen));
}

/* msghdr calls are never shortened (their bytes are spread over an iovec), only failed. */
ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    RESOLVE(sendmsg);
    int counted;
    int e = decide(CALL_SEND, fd, NULL, "sendmsg", &counted);
    if (e) {
        errno = e;
        return -1;
    }
    ssize_t r = real_sendmsg(fd, msg, flags);
    if (counted) count_bytes(CALL_SEND, r);
    return r;
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
    RESOLVE(recvmsg);
    int counted;
    int e = decide(CALL_RECV, fd, NULL, "recvmsg", &counted);
    if (e) {
        errno = e;
        return -1;
    }
    ssize_t r = real_recvmsg(fd, msg, flags);
    if (counted) count_bytes(CALL_RECV, r);
    return r;
}

/* Linux releases the descriptor even when close() reports an error, so a failed close closes. */
int close(int fd) {
    RESOLVE(close);
    int counted;
    int e = decide(CALL_CLOSE, fd, NULL, "close", &counted);
    int r = real_close(fd);
    if (e) {
        errno = e;
        return -1;
    }
    return r;
}

/* A failed accept leaves the connection in the backlog, as a real EMFILE does. */
int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    RESOLVE(accept);
    int counted;
    int e = decide(CALL_ACCEPT, fd, NULL, "accept", &counted);
    if (e) {
        errno = e;
        return -1;
    }
    return real_accept(fd, addr, len);
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    RESOLVE(accept4);
    int counted;
    int e = decide(CALL_ACCEPT, fd, NULL, "accept4", &counted);
    if (e) {
        errno = e;
        return -1;
    }
    return real_accept4(fd, addr, len, flags);
}

int select(int nfds, fd_set *r, fd_set *w, fd_set *x, struct timeval *timeout) {
    RESOLVE(select);
    int counted;
    int e = decide(CALL_SELECT, -1, NULL, "select", &counted);
    if (e) {
        errno = e;
        return -1;
    }
    return real_select(nfds, r, w, x, timeout);
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout) {
    RESOLVE(poll);
    int counted;
    int e = decide(CALL_POLL, -1, NULL, "poll", &counted);
    if (e) {
        errno = e;
        return -1;
    }
    return real_poll(fds, nfds, timeout);
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

/* Takes every free descriptor below `below`, so whatever the process opens next is numbered
 * `below` or more (select() cannot watch descriptors >= 1024, FD_SETSIZE). */
static void fill_fds(long below) {
    int null_fd = open("/dev/null", O_RDWR);
    if (null_fd < 0) return;
    int opened = null_fd < below ? 1 : 0, failed = 0;
    for (int fd = 3; fd < below; fd++) {
        if (fd == null_fd || fcntl(fd, F_GETFD) != -1) continue;
        if (dup2(null_fd, fd) == fd) opened++;
        else failed++;
    }
    if (null_fd >= below) real_close(null_fd);
    char line[160];
    snprintf(line, sizeof line, "fill pid %d below %ld opened %d failed %d at %lld\n", (int)my_pid, below, opened, failed,
             now_ms());
    log_line(line);
}

/* The task fakejvm is starting now: the number in task_path (-1 when there is none). Read with
 * the real calls; the file is no socket, and nothing here may count. */
static void read_task(void) {
    current_task = -1;
    if (!task_path[0]) return;
    resolve_all();
    int fd = open(task_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char buf[32];
    ssize_t n = real_read(fd, buf, sizeof buf - 1);
    real_close(fd);
    if (n <= 0) return;
    buf[n] = 0;
    char *end;
    long t = strtol(buf, &end, 10);
    if (end != buf && t >= 0) current_task = t;
}

static void parse_hold(const char *s) {
    if (!s || !*s) return;
    char *end;
    hold_fork = strtoul(s, &end, 10);
    while (*end == ' ') end++;
    if (strncmp(end, "stall", 5) == 0) hold_stall_ms = strtol(end + 5, NULL, 10);
    else hold_stall_ms = -1;
}

__attribute__((constructor)) static void forkfail_init(void) {
    target_pid = my_pid = getpid();
    resolve_all();
    const char *when = getenv("FAKEJVM_FORKFAIL_WHEN");
    parse_schedule(when, &fork_sched);
    const char *e = getenv("FAKEJVM_FORKFAIL_ERRNO");
    if (e && *e) fail_errno = atoi(e);
    const char *l = getenv("FAKEJVM_FORKFAIL_LOG");
    if (l && strlen(l) < sizeof log_path) strcpy(log_path, l);
    const char *role = getenv("FAKEJVM_SHIM_ROLE");
    who = (role && strcmp(role, "worker") == 0) ? WHO_WORKER : WHO_DAEMON;
    parse_rules(getenv("FAKEJVM_SHIM_CALLS"));
    parse_hold(getenv("FAKEJVM_SHIM_HOLD"));
    const char *tf = getenv("FAKEJVM_SHIM_TASK_FILE");
    if (tf && strlen(tf) < sizeof task_path) strcpy(task_path, tf);
    if (who == WHO_WORKER) read_task();
    drop_self_from_ld_preload();
    char line[256];
    snprintf(line, sizeof line, "loaded pid %d role %s when %s errno %d at %lld\n", (int)target_pid,
             who == WHO_WORKER ? "worker" : "daemon", when && *when ? when : "never", fail_errno, now_ms());
    log_line(line);
    const char *fill = getenv("FAKEJVM_SHIM_FILL_FDS");
    if (fill && *fill) fill_fds(strtol(fill, NULL, 10));
}

/* In the child of the daemon's fork `ordinal`, before fork() returns there: before Python runs
 * another line, so before the child can write its pid. */
static void hold_child(unsigned long ordinal) {
    if (hold_fork == 0 || ordinal != hold_fork) return;
    char line[160];
    if (hold_stall_ms < 0) {
        snprintf(line, sizeof line, "child %lu pid %d stop at %lld\n", ordinal, (int)my_pid, now_ms());
        log_line(line);
        raise(SIGSTOP);
    } else {
        snprintf(line, sizeof line, "child %lu pid %d stall %ld at %lld\n", ordinal, (int)my_pid, hold_stall_ms, now_ms());
        log_line(line);
        struct timespec ts = {hold_stall_ms / 1000, (hold_stall_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    snprintf(line, sizeof line, "child %lu pid %d resumed at %lld\n", ordinal, (int)my_pid, now_ms());
    log_line(line);
}

pid_t fork(void) {
    RESOLVE(fork);
    if (getpid() != my_pid) return real_fork();
    enum who parent = who;
    int loading = my_pid == target_pid;
    unsigned long ordinal = 0;
    char line[256];
    if (loading) {
        ordinal = __atomic_add_fetch(&forks_seen, 1, __ATOMIC_SEQ_CST);
        if (should_fail(&fork_sched, ordinal)) {
            snprintf(line, sizeof line, "fork %lu pid %d failed errno %d injected at %lld\n", ordinal, (int)target_pid,
                     fail_errno, now_ms());
            log_line(line);
            errno = fail_errno;
            return -1;
        }
    }
    pid_t child = real_fork();
    if (child == 0) {
        /* A fresh process: its own counters and random sequences, and its own part. */
        my_pid = getpid();
        who = (parent == WHO_DAEMON && loading) ? WHO_WORKER : WHO_OTHER;
        memset(calls_seen, 0, sizeof calls_seen);
        memset(bytes_seen, 0, sizeof bytes_seen);
        for (int i = 0; i < n_rules; i++) {
            rules[i].sched.rng_state = rules[i].sched.seed;
            rules[i].sched.fails = 0;
        }
        if (parent == WHO_DAEMON && loading) read_task();
        else current_task = -1;
        if (parent == WHO_DAEMON && loading) hold_child(ordinal);
    } else if (loading && child > 0) {
        snprintf(line, sizeof line, "fork %lu pid %d ok child %d at %lld\n", ordinal, (int)target_pid, (int)child, now_ms());
        log_line(line);
    } else if (loading) {
        int saved = errno;
        snprintf(line, sizeof line, "fork %lu pid %d failed errno %d real at %lld\n", ordinal, (int)target_pid, saved, now_ms());
        log_line(line);
        errno = saved;
    }
    return child;
}
