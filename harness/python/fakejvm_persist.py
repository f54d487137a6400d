# fakejvm's persistent executor and warm fork server (AFL++'s persistent mode, for pyspark's
# worker). Rust embeds this file (include_str!), writes it to a private directory and runs it
# with the target env's interpreter as
#     python .../fakejvm_persist.py persistent RECYCLE_AFTER PRELOAD    or    ... warm-fork 0 -
# (PRELOAD "arrow": a persistent server imports pandas and pyarrow before its first case)
# with PYTHON_WORKER_FACTORY_SECRET set, like a daemon.
#
#     python .../fakejvm_persist.py MODE N PRELOAD TRACER TOOLS COVDIR        with coverage:
# TRACER "monitoring" (CPython 3.12+: sys.monitoring) or "ctracer" (coverage.py's C tracer, from
# the tools dir TOOLS that fakejvm installed it into; on the loop's sys.path only while it is
# imported), COVDIR where warm-fork children leave their coverage; "-" for none (see Tracing).
#     python -c "$(cat fakejvm_persist.py)" lines PYSPARK_DIR REL...
# prints the executable lines of those files of the pyspark package (for the coverage report).
#
# It plays the part of `python -m pyspark.daemon pyspark.worker`'s accept loop: per connection
# it writes the serving pid, then runs the REAL `pyspark.daemon.worker(sock, False)` (auth against
# the secret, fdopen of the socket, the real `pyspark.worker.main(infile, outfile)`, SystemExit
# caught, flush), then waits for the JVM side to close, as daemon.py's forked child does. So the
# bytes on the socket are exactly those a daemon-forked worker reads and writes.
#   persistent: every case runs in THIS process, one after the other; module state pyspark keeps
#               between tasks is reset after each case, and the process recycles itself (exits)
#               after RECYCLE_AFTER cases or when it finds state it cannot reset (see check()).
#   warm-fork:  a fork per case, like the daemon, from a parent that has imported pyspark.worker,
#               pandas and pyarrow (when present) and frozen its heap (gc.freeze()), so the
#               child's refcount writes copy fewer pages.
#
# The protocol with fakejvm stays off the pyspark sockets: the control channel is this process's
# original stdout and stdin (fd 1 is re-pointed to stderr, so a task's print cannot corrupt it;
# fd 0 to /dev/null, as daemon.py does for its children).
#   out: one JSON object per line:
#     {"ready": PATH or PORT, "pid": PID, "mode": ..., "modules": N, "threads": N}   once, listening
#     {"done": N, "code": C, "status": S}     persistent, per case: daemon.worker's code, and the
#                                              status a forked child would have exited with
#     {"done": N, ..., "recycle": "why", "children": [PID...]}             then it exits 0
#     {"error": "why"}                                                      start-up failed; exit 3
#   with coverage, the ready line carries "tracer" and "cov" (the lines pyspark's imports ran),
#   and every done line "cov": {REL: [LINE...]}, the lines of pyspark's files the case ran, REL
#   relative to the pyspark package. A warm-fork child writes its case's {REL: [LINE...]} to
#   COVDIR/PID (renamed into place) once its connection is closed, just before it exits.
#   in: EOF means shut down (warm-fork also sends SIGHUP to its group, as daemon.py's shutdown).
import os
import sys


def executable_lines(path):
    """The lines a tracer can report for the file at `path`: every line of every code object of
    its compiled source (co_lines(), 3.10+), as the target interpreter compiles it."""
    import types

    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    lines = set()
    stack = [code]
    while stack:
        c = stack.pop()
        lines.update(line for _, _, line in c.co_lines() if line is not None)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    lines.discard(0)
    return sorted(lines)


if len(sys.argv) > 2 and sys.argv[1] == "lines":
    import json

    out = {}
    for rel in sys.argv[3:]:
        try:
            out[rel] = executable_lines(os.path.join(sys.argv[2], rel))
        except (OSError, SyntaxError, ValueError):
            out[rel] = None
    sys.stdout.write(json.dumps(out))
    sys.exit(0)

# Running a file puts its directory first on sys.path; `python -m pyspark.daemon` puts the
# working directory there.
if sys.path:
    sys.path[0] = os.getcwd()

MODE = sys.argv[1] if len(sys.argv) > 1 else "persistent"
RECYCLE_AFTER = int(sys.argv[2]) if len(sys.argv) > 2 else 0
PRELOAD = len(sys.argv) > 3 and sys.argv[3] == "arrow"
TRACER = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
TOOLS = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
COVDIR = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] != "-" else None

# The control channel first, before anything can print.
CTL_OUT = os.fdopen(os.dup(1), "w", buffering=1)
CTL_IN = os.dup(0)
os.dup2(2, 1)
_devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(_devnull, 0)
os.close(_devnull)


def tell(**obj):
    import json

    CTL_OUT.write(json.dumps(obj) + "\n")
    CTL_OUT.flush()


class Tracing:
    """Which lines of pyspark's own files run, case by case. Only files under the pyspark package
    count (not a case's cloudpickled function, the stdlib or pandas); paths are sent relative to
    it. Started before pyspark is imported, so the lines its imports run are known too (sent
    once, in the ready line).
      monitoring (CPython 3.12+): a sys.monitoring LINE callback that records (file, line) and
        returns DISABLE, so each code location costs one call per case; restart_events() before
        each case re-arms every location.
      ctracer (3.11 and older, where sys.monitoring does not exist): coverage.py's C trace
        function, filling {file: set(lines)} for the files should_trace() accepts; emptied after
        each case. A case that replaces the trace function gets a new tracer before the next."""

    def __init__(self, kind, tools):
        import importlib.util

        # Found, not imported: importing it now would run its imports untraced.
        spec = importlib.util.find_spec("pyspark")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("no pyspark package on sys.path")
        self.prefix = list(spec.submodule_search_locations)[0] + os.sep
        self.kind = kind
        self.hits = {}
        self.tracer = None
        if kind == "monitoring":
            self._monitor()
        elif kind == "ctracer":
            self._load_ctracer(tools)
            self._start_ctracer()
        else:
            raise ValueError("unknown tracer %r (monitoring or ctracer)" % kind)

    def _monitor(self):
        mon = getattr(sys, "monitoring", None)
        if mon is None:
            raise RuntimeError("sys.monitoring needs CPython 3.12+, this is %s" % sys.version.split()[0])
        # Not PROFILER_ID: pyspark's UDF profiler runs cProfile, which takes that one on 3.12+.
        for tool in (mon.COVERAGE_ID, 3, 4):
            if mon.get_tool(tool) is None:
                mon.use_tool_id(tool, "fakejvm")
                break
        else:
            raise RuntimeError("sys.monitoring tool ids 1, 3 and 4 are all taken")
        hits, prefix, disable = self.hits, self.prefix, mon.DISABLE

        def line(code, number):
            f = code.co_filename
            if f.startswith(prefix):
                s = hits.get(f)
                if s is None:
                    hits[f] = s = set()
                s.add(number)
            return disable

        mon.register_callback(tool, mon.events.LINE, line)
        mon.set_events(tool, mon.events.LINE)

    def _load_ctracer(self, tools):
        # The extension module alone: importing the coverage package would bring its ~40 modules
        # (sqlite3 among them) into every case's sys.modules, which a real worker does not have.
        import glob
        import importlib.machinery
        import importlib.util

        found = sorted(glob.glob(os.path.join(tools or "", "coverage", "tracer.*.so")))
        if not found:
            raise ImportError("no coverage/tracer.*.so (coverage.py's C tracer) in %r" % tools)
        loader = importlib.machinery.ExtensionFileLoader("coverage.tracer", found[0])
        spec = importlib.util.spec_from_loader("coverage.tracer", loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        self._CTracer, Disposition = mod.CTracer, mod.CFileDisposition
        prefix = self.prefix

        def should_trace(filename, frame):
            d = Disposition()
            d.original_filename = d.canonical_filename = d.source_filename = filename
            d.trace = filename.startswith(prefix)
            d.reason = ""
            d.file_tracer = None
            d.has_dynamic_filename = False
            return d

        self._should_trace = should_trace
        self._cache = {}

    def _start_ctracer(self):
        def nothing(*a, **k):
            return None

        t = self._CTracer()
        t.data = self.hits
        t.trace_arcs = False
        t.should_trace = self._should_trace
        t.should_trace_cache = self._cache
        t.lock_data = t.unlock_data = nothing
        t.warn = nothing
        t.file_tracers = {}
        # Unset members are NULL in C, which the tracer would call: None means "not used".
        t.should_start_context = t.switch_context = t.concur_id_func = None
        t.check_include = t.disable_plugin = None
        t.start()  # sys.settrace for this thread; sys.gettrace() is then t
        self.tracer = t

    def begin(self):
        """Before a case."""
        if self.kind == "monitoring":
            sys.monitoring.restart_events()
        elif sys.gettrace() is not self.tracer:
            self._start_ctracer()
        self.hits.clear()

    def ours(self, trace):
        return trace is not None and trace is self.tracer

    def take(self):
        """{REL: sorted lines} run since begin() (or since the start), and forget them."""
        n = len(self.prefix)
        out = {f[n:]: sorted(lines) for f, lines in self.hits.items() if lines}
        self.hits.clear()
        return out

    def write_case(self, pid):
        """Warm-fork child: this case's lines to COVDIR/PID, whole or not at all."""
        import json

        path = os.path.join(COVDIR, str(pid))
        with open(path + ".tmp", "w") as f:
            json.dump(self.take(), f)
        os.rename(path + ".tmp", path)


COV = None
if TRACER is not None:
    try:
        COV = Tracing(TRACER, TOOLS)
    except BaseException as e:
        tell(error="starting the %s coverage tracer failed: %r" % (TRACER, e))
        sys.exit(3)

try:
    # daemon.py (3.5-4.1) imports its worker module from argv[1] when it starts with "pyspark".
    sys.argv = ["pyspark/daemon.py", "pyspark.worker"]
    import pyspark.daemon as daemon

    sys.argv[0] = daemon.__file__
    import pyspark.worker  # noqa: F401  (4.2+ daemons import it after the fork; see below)
except BaseException as e:  # an env without pyspark, a broken install
    tell(error="importing pyspark.daemon / pyspark.worker failed: %r" % (e,))
    sys.exit(3)

import gc
import importlib
import select
import signal
import socket
import struct
import sysconfig
import threading
import traceback

try:  # 4.2+: daemon.py's forked child runs inside `with enable_faulthandler():`
    from pyspark.util import enable_faulthandler, _faulthandler_helper
except ImportError:
    enable_faulthandler = None
    _faulthandler_helper = None


def child_path(sock):
    """What daemon.py's forked child does with its connection, minus the fork and the exit.
    Returns (daemon.worker's code, the status the child would pass to os._exit): 0 after any
    code once the close was waited for, 1 when an exception escaped."""
    ctx = enable_faulthandler() if enable_faulthandler is not None else None
    if ctx is not None:
        ctx.__enter__()
    try:
        # daemon.py: write_int(os.getpid(), outfile) on a makefile of the socket; the same four
        # bytes in one send, without a file object per case.
        sock.sendall(struct.pack("!i", os.getpid()))
        code = daemon.worker(sock, False)
        # Not reused (fakejvm never sets SPARK_REUSE_WORKER here): wait for closing.
        try:
            while sock.recv(1024):
                pass
        except Exception:
            pass
        return (code if isinstance(code, int) else 1), 0
    except BaseException:
        # daemon.py: traceback.print_exc(); os._exit(1), without waiting for the close.
        traceback.print_exc()
        return None, 1
    finally:
        if ctx is not None:
            try:
                ctx.__exit__(None, None, None)
            except BaseException:
                traceback.print_exc()


def listen():
    """(socket, where fakejvm reaches it: a path or a port). A Unix socket beside this file (in
    fakejvm's private directory) where the path fits, else 127.0.0.1: the daemon's bytes either
    way (the secret is checked on both, as a TCP daemon does), and a Unix socket spares every
    case TCP's handshake, teardown and ACK round trips (about a fifth of a clean RDD case's CPU,
    fakejvm fuzz --bench)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve-%d.sock" % os.getpid())
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        where = path
    except OSError:  # a path past sun_path's 108 bytes, a read-only directory
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        where = s.getsockname()[1]
    s.listen(max(1024, socket.SOMAXCONN))
    return s, where


def unlisten(where):
    """A Unix socket's file goes with its server: a recycling lane would leave one per process."""
    if isinstance(where, str):
        try:
            os.unlink(where)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# persistent: the state a fresh daemon-forked worker starts with, and putting it back.

def _find(module, name):
    m = sys.modules.get(module)
    if m is None:
        try:
            m = importlib.import_module(module)
        except ImportError:
            return None
    return getattr(m, name, None)


def _classes():
    """Classes whose class attributes pyspark's main() writes per task (3.5: pyspark.files; 4.x:
    pyspark.core.files): task context (`_taskContext`, barrier `_port`/`_secret`), SparkFiles
    (`_root_directory`, `_is_running_on_worker`)."""
    out = []
    for module, name in (
        ("pyspark.taskcontext", "TaskContext"),
        ("pyspark.taskcontext", "BarrierTaskContext"),
        ("pyspark.core.files", "SparkFiles"),
        ("pyspark.files", "SparkFiles"),
    ):
        c = _find(module, name)
        if c is not None and c not in out:
            out.append(c)
    return out


def _registries():
    """Module-level dicts a task fills and a fresh worker has empty: broadcasts (3.5:
    pyspark.broadcast; 4.x: pyspark.core.broadcast), accumulators, and cloudpickle's dynamic class
    trackers (a class unpickled in one case would be handed to the next case unpickling the same
    tracker id)."""
    out = []
    for module, name in (
        ("pyspark.core.broadcast", "_broadcastRegistry"),
        ("pyspark.broadcast", "_broadcastRegistry"),
        ("pyspark.accumulators", "_accumulatorRegistry"),
        ("pyspark.cloudpickle.cloudpickle", "_DYNAMIC_CLASS_TRACKER_BY_ID"),
        ("pyspark.cloudpickle.cloudpickle", "_DYNAMIC_CLASS_TRACKER_BY_CLASS"),
    ):
        d = _find(module, name)
        if d is not None and all(d is not o for o in out):
            out.append(d)
    return out


try:  # the C function: signal.getsignal wraps it in enum conversions that cost 3 us a call
    from _signal import getsignal as _getsignal
except ImportError:
    _getsignal = signal.getsignal

# check() looks at everything after every case except these, looked at every FULL_EVERY cases
# (and on the last case before a recycle): the full module set (every case: its size), every
# descriptor (every case: the lowest free number, which a leaked or closed one moves), native
# threads, resident memory and the less likely resource limits.
FULL_EVERY = 32

SIGNALS = [
    s
    for s in range(1, signal.NSIG)
    if s not in (signal.SIGKILL, signal.SIGSTOP) and s < 32  # real-time ones are not Python's
]
RLIMITS = []
try:
    import resource

    RLIMITS = [
        getattr(resource, n)
        for n in ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE")
        if hasattr(resource, n)
    ]
except ImportError:
    resource = None

LIB_DIRS = tuple(
    sorted(
        {
            os.path.realpath(p)
            for k in ("stdlib", "platstdlib", "purelib", "platlib")
            for p in [sysconfig.get_paths().get(k)]
            if p
        }
    )
)


def _lib_module(m):
    """A module of the interpreter's own library or site-packages (or built in): importing it is
    what a fresh worker would do too, not a case's state."""
    f = getattr(m, "__file__", None)
    if not f:
        return True
    f = os.path.realpath(f)
    return any(f.startswith(d + os.sep) for d in LIB_DIRS)


def _fds():
    return set(os.listdir("/proc/self/fd"))


def _lowest_free_fd():
    fd = os.dup(0)
    os.close(fd)
    return fd


def _native_threads():
    return len(os.listdir("/proc/self/task"))


def _rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _children():
    """Live children (any thread's), or [] cheaply when there are none. Zombies are reaped."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return []
        if pid == 0:
            break
    pids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/children" % tid) as f:
                pids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


class Baseline:
    """Everything check() compares after a case, taken once the process is ready to serve."""

    def __init__(self):
        self.path = list(sys.path)
        self.path_cache = set(sys.path_importer_cache)
        self.environ = dict(os.environ._data)
        self.cwd = os.getcwd()
        self.umask = os.umask(0o22)
        os.umask(self.umask)
        # Data attributes only (pyspark writes those); callables and dunders never change.
        self.classes = [
            (
                c,
                set(vars(c)),
                {
                    k: v
                    for k, v in vars(c).items()
                    if not k.startswith("__") and not callable(v) and not isinstance(v, (classmethod, staticmethod, property))
                },
            )
            for c in _classes()
        ]
        self.registries = _registries()
        self.modules = set(sys.modules)
        self.module_objs = {}
        self.threads = {t.ident for t in threading.enumerate()}
        self.native_threads = _native_threads()
        self.signals = [(s, _getsignal(s)) for s in SIGNALS]
        self.sigmask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.rlimits = {r: resource.getrlimit(r) for r in RLIMITS}
        self.fds = _fds()
        self.lowest_free_fd = _lowest_free_fd()
        self.stdio = (sys.stdin, sys.stdout, sys.stderr)
        self.hooks = (sys.displayhook, sys.excepthook, sys.breakpointhook)
        self.recursion = sys.getrecursionlimit()
        self.gc = (gc.isenabled(), gc.get_threshold())
        self.switch = sys.getswitchinterval()
        import warnings

        self.warnings = list(warnings.filters)
        self.logging = None
        if "logging" in sys.modules:
            root = sys.modules["logging"].root
            self.logging = (list(root.handlers), root.level)
        self.rss = _rss_kib()


def reset(b):
    """Put back what a fresh worker starts with. What can be reset cheaply is reset; what cannot
    is left for check() to see."""
    if sys.path != b.path:
        # worker.main puts the task's spark files dir first on sys.path, every task. Dropping
        # the finders cached for the directories it added is enough: importlib.invalidate_caches()
        # would visit every cached finder (about 5% of this loop's busy time per case, py-spy), and
        # the finders of the baseline's directories see new files by their mtime anyway.
        sys.path[:] = b.path
        for k in set(sys.path_importer_cache) - b.path_cache:
            del sys.path_importer_cache[k]
    for d in b.registries:
        if d:  # a weak dict's clear() pops item by item, and raises once when empty
            d.clear()
    for c, names, attrs in b.classes:
        now = vars(c)
        for k, v in attrs.items():
            if now.get(k, b) is not v:
                setattr(c, k, v)
        if len(now) != len(names):
            # Added by the case (BarrierTaskContext._taskContext shadowing TaskContext's, say).
            for k in [k for k in now if k not in names]:
                delattr(c, k)
    from pyspark import shuffle

    shuffle.MemoryBytesSpilled = 0
    shuffle.DiskBytesSpilled = 0
    if os.environ._data != b.environ:
        tz = os.environ.get("TZ")
        for k in [k for k in os.environ._data if k not in b.environ]:
            del os.environ[os.environ.decodekey(k)]
        for k, v in b.environ.items():
            if os.environ._data.get(k) != v:
                os.environ[os.environ.decodekey(k)] = os.environ.decodevalue(v)
        if os.environ.get("TZ") != tz:
            import time

            time.tzset()
    if os.getcwd() != b.cwd:
        os.chdir(b.cwd)
    os.umask(b.umask)  # sets and returns the old one: cheaper than comparing first
    sys.stdin, sys.stdout, sys.stderr = b.stdio
    sys.displayhook, sys.excepthook, sys.breakpointhook = b.hooks
    if sys.getrecursionlimit() != b.recursion:
        sys.setrecursionlimit(b.recursion)
    (enabled, threshold) = b.gc
    if gc.isenabled() != enabled:
        gc.enable() if enabled else gc.disable()
    if gc.get_threshold() != threshold:
        gc.set_threshold(*threshold)
    if sys.getswitchinterval() != b.switch:
        sys.setswitchinterval(b.switch)
    trace = sys.gettrace()
    if trace is not None and not (COV is not None and COV.ours(trace)):
        sys.settrace(None)
    if sys.getprofile() is not None:
        sys.setprofile(None)
    import warnings

    if warnings.filters != b.warnings:
        warnings.filters[:] = b.warnings
        warnings._filters_mutated()
    if b.logging is not None:
        root = sys.modules["logging"].root
        root.handlers[:] = b.logging[0]
        root.setLevel(b.logging[1])


def check(b, full):
    """Why this process cannot serve another case with the state a fresh worker has, or None.
    Checked, in this order: Python threads started by the case still alive; native threads
    beyond the baseline (unless the case imported library modules, whose thread pools become the
    new baseline); child processes alive; signal handlers or the blocked-signal mask changed; an
    alarm or interval timer armed; resource limits changed (pyspark's setup_memory_limits lowers
    the hard RLIMIT_AS, which cannot be raised again); a module imported from outside the
    interpreter's library and site-packages (a case's own code, e.g. from its spark files dir),
    or a known module removed; descriptors left open or closed (after one gc pass);
    faulthandler still enabled (4.2+: its helper's state not back to idle); resident memory over
    the baseline plus 256 MiB. Some of these in full only when `full` (see FULL_EVERY)."""
    live = {t.ident for t in threading.enumerate()}
    if live - b.threads:
        return "Python threads alive after the case: %s" % sorted(
            t.name for t in threading.enumerate() if t.ident not in b.threads
        )
    mods = sys.modules
    added = False
    if len(mods) != len(b.modules) or (full and not b.modules.issuperset(mods)):
        for name in set(mods) - b.modules:
            m = mods[name]
            if m is not None and not _lib_module(m):
                return "module %s imported from %s" % (name, getattr(m, "__file__", "?"))
            b.modules.add(name)
            added = True
        gone = [n for n in b.modules if n not in mods]
        if gone:
            return "modules removed from sys.modules: %s" % sorted(gone)[:5]
    native = _native_threads() if (full or added) else b.native_threads
    if native != b.native_threads:
        if added and native > b.native_threads:
            b.native_threads = native
        else:
            return "native threads %d after the case, %d before" % (native, b.native_threads)
    kids = _children()
    if kids:
        return "child processes alive after the case: %s" % kids
    for s, h in b.signals:
        if _getsignal(s) is not h:
            return "the handler of signal %d changed" % s
    if signal.pthread_sigmask(signal.SIG_BLOCK, []) != b.sigmask:
        return "the blocked-signal mask changed"
    if signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0) or signal.alarm(0):
        return "an alarm or interval timer is armed"
    for r, v in b.rlimits.items():
        if (full or r == RLIMITS[0]) and resource.getrlimit(r) != v:
            return "resource limit %d changed: %s -> %s" % (r, v, resource.getrlimit(r))
    if _lowest_free_fd() != b.lowest_free_fd:
        full = True
    fds = _fds() if full else b.fds
    if fds != b.fds:
        gc.collect()
        fds = _fds()
        # listdir's own descriptor is gone once it returns; what differs now is real.
        if fds - b.fds:
            return "descriptors left open: %s" % sorted(fds - b.fds, key=int)
        if b.fds - fds:
            return "descriptors closed: %s" % sorted(b.fds - fds, key=int)
    import faulthandler

    if faulthandler.is_enabled():
        return "faulthandler left enabled"
    h = _faulthandler_helper
    if h is not None and (h._reentry_depth != 0 or h._log_path is not None):
        return "pyspark's faulthandler helper left active (depth %d)" % h._reentry_depth
    if full and _rss_kib() > b.rss + 256 * 1024:
        return "resident memory grew from %d to %d MiB" % (b.rss // 1024, _rss_kib() // 1024)
    return None


def coverage_at_start():
    """For the ready line: the tracer and the lines pyspark's imports ran."""
    if COV is None:
        return {}
    return {"tracer": COV.kind, "cov": COV.take()}


def preload_arrow():
    for name in ("pandas", "pyarrow", "pyspark.sql.pandas.serializers"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def persistent():
    if PRELOAD:
        preload_arrow()  # what one Arrow UDF case would leave imported anyway
    # A daemon-forked child inherits SIGHUP ignored, SIGCHLD ignored and daemon.py's SIGTERM
    # handler; daemon.worker() then sets SIGHUP, SIGCHLD, SIGTERM to default and SIGINT to
    # default_int_handler. Same here, before the baseline.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    listen_sock, where = listen()
    b = Baseline()
    tell(
        ready=where,
        pid=os.getpid(),
        mode="persistent",
        modules=len(sys.modules),
        threads=b.native_threads,
        **coverage_at_start()
    )
    served = 0
    while True:
        r, _, _ = select.select([CTL_IN, listen_sock], [], [])
        if CTL_IN in r and not os.read(CTL_IN, 4096):
            unlisten(where)
            return 0  # fakejvm closed our stdin: shut down
        if listen_sock not in r:
            continue
        sock, _ = listen_sock.accept()
        if COV is not None:
            COV.begin()
        try:
            code, status = child_path(sock)
        finally:
            sock.close()
        served += 1
        cov = COV.take() if COV is not None else None
        reset(b)
        last = RECYCLE_AFTER and served >= RECYCLE_AFTER
        why = check(b, last or served % FULL_EVERY == 0)
        if why is None and last:
            why = "served %d cases" % served
        msg = {"done": served, "code": code, "status": status}
        if cov is not None:
            msg["cov"] = cov
        if why is not None:
            msg["recycle"] = why
            msg["children"] = _children() if why.startswith("child") else []
            unlisten(where)
            tell(**msg)
            return 0
        tell(**msg)


def warm_fork():
    # Imported before the fork, which daemon.py 4.2+ avoids on purpose ("both pandas and pyarrow
    # start some threads when they are imported"): the threads count is in the ready line.
    # Only with Arrow seeds: an RDD case forked from a parent with pandas and pyarrow costs about
    # twice the CPU (21 against 9-14 ms a case on 4.0.5, fakejvm fuzz --bench).
    if PRELOAD:
        preload_arrow()
    try:
        os.setpgid(0, 0)  # as daemon.py's manager: a group of our own to corral the children
    except OSError:
        pass  # a session leader already leads its group
    listen_sock, where = listen()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *a: shutdown(1))
    gc.collect()
    gc.freeze()

    def shutdown(code):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        unlisten(where)
        os.kill(0, signal.SIGHUP)  # as daemon.py: the group's children get SIGHUP
        os._exit(code)

    tell(
        ready=where,
        pid=os.getpid(),
        mode="warm-fork",
        modules=len(sys.modules),
        threads=_native_threads(),
        **coverage_at_start()
    )
    while True:
        # Children are reaped here rather than with SIGCHLD ignored (daemon.py's way), so their
        # CPU time is added to ours and fakejvm can count it per case.
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        r, _, _ = select.select([CTL_IN, listen_sock], [], [], 0.5)
        if CTL_IN in r and not os.read(CTL_IN, 4096):
            shutdown(0)
        if listen_sock not in r:
            continue
        sock, _ = listen_sock.accept()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                listen_sock.close()
                os.close(CTL_IN)
                CTL_OUT.close()
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                if COV is not None:
                    COV.begin()
                _, status = child_path(sock)
                if COV is not None:
                    COV.write_case(os.getpid())
            finally:
                os._exit(status)
        sock.close()


if MODE == "persistent":
    sys.exit(persistent())
elif MODE == "warm-fork":
    warm_fork()
else:
    tell(error="unknown mode %r (persistent or warm-fork)" % MODE)
    sys.exit(3)
