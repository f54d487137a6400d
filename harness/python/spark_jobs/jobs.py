"""PySpark driver jobs whose worker traffic `fakejvm record` turns into goldens.

Used only for recording (ci/record-goldens), never by the tests: the tests replay what these
jobs made a real Spark JVM send. Run one as

    fakejvm record --pyspark 4.0.5 --out golden/pyspark-4.0.5/map_parallelize -- \
        {python} harness/python/spark_jobs/jobs.py map_parallelize

Every job runs in local[1] (one task at a time, so a reused worker carries the tasks in a
fixed order) and checks its own result, so a golden is never recorded from a job that went
wrong. Outputs are lists and dicts in insertion order, never sets: replies must be byte-stable.
"""

import argparse
import os
import sys
import tempfile

from pyspark import SparkConf, SparkContext

JOBS = {}


def job(f):
    JOBS[f.__name__] = f
    return f


def context(mode):
    conf = SparkConf().setMaster("local[1]").setAppName("fakejvm-golden")
    conf.set("spark.ui.enabled", "false")
    if mode in ("direct", "direct_uds"):
        conf.set("spark.python.use.daemon", "false")
    if mode in ("uds", "direct_uds"):
        # pyspark 4.1+: Unix domain sockets between the JVM and Python, no auth.
        conf.set("spark.python.unix.domain.socket.enabled", "true")
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    return sc


def expect(got, want):
    if got != want:
        raise SystemExit("job result differs: got %r, want %r" % (got, want))


# Lines for textFile: non-ASCII, emoji, an empty line and a 100k-character line.
LINES = ["plain ascii", "h\u00e9llo w\u00f6rld", "\u65e5\u672c\u8a9e", "emoji \U0001F600\U0001F389", "", "x" * 100000, "last"]


def text_file(sc, tmp):
    path = os.path.join(tmp, "lines.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(LINES) + "\n")
    return sc.textFile(path, 1)


@job
def map_parallelize(sc, tmp):
    """map over parallelize(list): two partitions, so two tasks on one (reused) worker."""
    got = sc.parallelize(list(range(10)), 2).map(lambda x: x * 2).collect()
    expect(got, [x * 2 for x in range(10)])


@job
def textfile_unicode(sc, tmp):
    """textFile: UTF-8 frames from the JVM, one per line."""
    got = text_file(sc, tmp).map(lambda s: (len(s), s[:12])).collect()
    expect(got, [(len(s), s[:12]) for s in LINES])


@job
def union_reserialized(sc, tmp):
    """textFile (UTF8) union parallelize (pickled): different deserializers, so pyspark
    reserializes both sides first, an extra Python stage."""
    got = text_file(sc, tmp).union(sc.parallelize(["p1", "p2"], 1)).map(lambda s: s[:8].upper()).collect()
    expect(got, [s[:8].upper() for s in LINES] + ["P1", "P2"])


@job
def accumulator_broadcast(sc, tmp):
    """An accumulator (updates in the reply) and a broadcast (a file named in the request)."""
    acc = sc.accumulator(0)
    table = sc.broadcast({"a": 1, "b": 2, "c": 3})

    def look_up(x):
        acc.add(1)
        return (x, table.value.get(x, -1))

    got = sc.parallelize(["a", "b", "z"], 1).map(look_up).collect()
    expect(got, [("a", 1), ("b", 2), ("z", -1)])
    expect(acc.value, 3)


@job
def raising_lambda(sc, tmp):
    """A function that raises: the reply is -2 and a traceback."""

    def boom(x):
        if x == 3:
            raise ValueError("boom at %d" % x)
        return x

    try:
        sc.parallelize(list(range(5)), 1).map(boom).collect()
    except Exception as e:  # Py4JJavaError wrapping the Python traceback
        if "boom at 3" not in str(e):
            raise
    else:
        raise SystemExit("the job did not fail")


@job
def reuse_two_actions(sc, tmp):
    """Two actions, one partition each: the second task runs on the worker the first left."""
    rdd = sc.parallelize(list(range(6)), 1).map(lambda x: x + 1)
    expect(rdd.collect(), [1, 2, 3, 4, 5, 6])
    expect(rdd.map(lambda x: -x).sum(), -21)


@job
def zip_cartesian(sc, tmp):
    """zip (PairDeserializer) and cartesian (CartesianDeserializer): alternating batches."""
    a = sc.parallelize(list(range(4)), 1)
    b = sc.parallelize(["a", "b", "c", "d"], 1)
    expect(a.zip(b).collect(), [(0, "a"), (1, "b"), (2, "c"), (3, "d")])
    expect(a.cartesian(b.map(lambda s: s.upper())).count(), 16)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job", choices=sorted(JOBS))
    p.add_argument("--mode", choices=["daemon", "direct", "uds", "direct_uds"], default="daemon")
    args = p.parse_args()
    sc = context(args.mode)
    try:
        with tempfile.TemporaryDirectory(prefix="fakejvm-job-") as tmp:
            JOBS[args.job](sc, tmp)
    finally:
        sc.stop()
    print("job %s (%s) done" % (args.job, args.mode), file=sys.stderr)


if __name__ == "__main__":
    main()
