"""Timing glue for `fakejvm bench`; prints one JSON object on stdout.

Every figure is the median of REPEATS timed runs.

    python bench_glue.py worker REPEATS REQUEST_FILE REPLY_FILE [WARMUP_FILE]
        The worker alone: feeds a request stream that fakejvm wrote to a file to the target
        pyspark's worker entry point, output to /dev/null. Times the entry point only (the
        imports happen before the clock starts). With WARMUP_FILE, that task runs first, untimed,
        in the same process, as a reused worker has run a task before. Then, untimed, the same
        request once more with its reply to REPLY_FILE, which fakejvm decodes and checks: a
        worker that raised writes a traceback and exits, and must not pass for a fast run.

    python bench_glue.py spark REPEATS TEXT_FILE N_INTS [N_DOUBLES MAX_RECORDS_PER_BATCH]
        A real Spark JVM in local[1]: times textFile(...).map(len).count() and a
        parallelize-based map over N_INTS ints, excluding JVM startup (a warm-up job starts the
        Python worker first) and excluding the driver's pickling of the ints. With N_DOUBLES > 0,
        also a scalar pandas UDF `v + 1` over spark.range(N_DOUBLES) cast to double, with Arrow
        batches of MAX_RECORDS_PER_BATCH rows, summed in the JVM (a count() could prune the UDF
        away); a warm-up run of the same query over two batches' rows goes first, so the reused
        worker has imported pandas and pyarrow before the clock starts.
"""

import json
import sys
import time


def median_of(repeats, run):
    """The median of `repeats` calls of run(), each returning seconds (the upper middle)."""
    times = sorted(run() for _ in range(repeats))
    return times[len(times) // 2]


def run_worker(w, path, out):
    with open(path, "rb") as infile, open(out, "wb") as outfile:
        start = time.perf_counter()
        try:
            w.main(infile, outfile)
        except SystemExit:
            # Some versions exit when the stream ends; the task itself has finished by then.
            pass
        return time.perf_counter() - start


def worker(repeats, path, out, warmup=None):
    import pyspark.worker as w

    if warmup is not None:
        run_worker(w, warmup, "/dev/null")
    seconds = median_of(repeats, lambda: run_worker(w, path, "/dev/null"))
    run_worker(w, path, out)
    print(json.dumps({"seconds": seconds}))


def arrow_job(spark_session, n):
    """Seconds of the pandas UDF job over n doubles; checks the sum of v + 1 over 0..n-1."""
    import pandas as pd
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")
    def plus_one(v: pd.Series) -> pd.Series:
        return v + 1

    df = spark_session.range(0, n, 1, 1).select(F.col("id").cast("double").alias("v"))
    start = time.perf_counter()
    total = df.select(plus_one("v").alias("w")).agg(F.sum("w")).collect()[0][0]
    elapsed = time.perf_counter() - start
    assert total == n * (n + 1) / 2, (total, n)
    return elapsed


def spark(repeats, text_path, n_ints, n_doubles=0, max_records=10000):
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    conf = (
        SparkConf()
        .setMaster("local[1]")
        .setAppName("fakejvm-bench")
        .set("spark.ui.enabled", "false")
        .set("spark.python.worker.reuse", "true")
        .set("spark.sql.execution.arrow.maxRecordsPerBatch", str(max_records))
    )
    session = SparkSession.builder.config(conf=conf).getOrCreate()
    sc = session.sparkContext
    sc.setLogLevel("ERROR")
    result = {}
    try:
        # Starts the daemon and a worker, so the timed jobs measure steady state.
        assert sc.parallelize([1, 2, 3], 1).map(lambda x: x).count() == 3

        def text_run():
            start = time.perf_counter()
            assert sc.textFile(text_path, 1).map(len).count() >= 0
            return time.perf_counter() - start

        text_s = median_of(repeats, text_run)
        lines = sc.textFile(text_path, 1).count()

        ints = sc.parallelize(list(range(n_ints)), 1)  # pickled into the JVM here, not timed

        def ints_run():
            start = time.perf_counter()
            assert ints.map(lambda x: x + 1).count() == n_ints
            return time.perf_counter() - start

        ints_s = median_of(repeats, ints_run)
        n = n_ints
        result.update({"text_seconds": text_s, "text_lines": lines, "ints_seconds": ints_s, "ints": n})

        if n_doubles > 0:
            arrow_job(session, 2 * max_records)  # the warm-up, as fakejvm's
            arrow_s = median_of(repeats, lambda: arrow_job(session, n_doubles))
            result.update({"arrow_seconds": arrow_s, "doubles": n_doubles})
    finally:
        session.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(int(sys.argv[2]), *sys.argv[3:6])
    elif sys.argv[1] == "spark":
        spark(int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:7]))
    else:
        sys.exit(
            "usage: bench_glue.py worker REPEATS REQUEST_FILE REPLY_FILE [WARMUP_FILE]"
            " | spark REPEATS TEXT_FILE N_INTS [N_DOUBLES MAX_RECORDS_PER_BATCH]"
        )
