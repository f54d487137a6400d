"""Timing glue for `fakejvm bench`; prints one JSON object on stdout.

    python bench_glue.py worker REQUEST_FILE
        The worker alone: feeds a request stream that fakejvm wrote to a file to the target
        pyspark's worker entry point, output to /dev/null. Times the entry point only (the
        imports happen before the clock starts).

    python bench_glue.py spark TEXT_FILE N_INTS
        A real Spark JVM in local[1]: times textFile(...).map(len).count() and a
        parallelize-based map over N_INTS ints, excluding JVM startup (a warm-up job starts the
        Python worker first) and excluding the driver's pickling of the ints.
"""

import json
import sys
import time


def worker(path):
    import pyspark.worker as w

    with open(path, "rb") as infile, open("/dev/null", "wb") as outfile:
        start = time.perf_counter()
        try:
            w.main(infile, outfile)
        except SystemExit:
            # Some versions exit when the stream ends; the task itself has finished by then.
            pass
        elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed}))


def spark(text_path, n_ints):
    from pyspark import SparkConf, SparkContext

    conf = SparkConf().setMaster("local[1]").setAppName("fakejvm-bench").set("spark.ui.enabled", "false")
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    try:
        # Starts the daemon and a worker, so the timed jobs measure steady state.
        assert sc.parallelize([1, 2, 3], 1).map(lambda x: x).count() == 3

        start = time.perf_counter()
        lines = sc.textFile(text_path, 1).map(len).count()
        text_s = time.perf_counter() - start

        ints = sc.parallelize(list(range(n_ints)), 1)  # pickled into the JVM here, not timed
        start = time.perf_counter()
        n = ints.map(lambda x: x + 1).count()
        ints_s = time.perf_counter() - start
        assert n == n_ints, n
    finally:
        sc.stop()
    print(json.dumps({"text_seconds": text_s, "text_lines": lines, "ints_seconds": ints_s, "ints": n}))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2])
    elif sys.argv[1] == "spark":
        spark(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: bench_glue.py worker REQUEST_FILE | spark TEXT_FILE N_INTS")
