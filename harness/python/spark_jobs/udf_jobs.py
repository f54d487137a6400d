"""Spark SQL jobs with Python UDFs whose worker traffic `fakejvm record` turns into goldens.

Used only for recording (ci/record-goldens), never by the tests: the tests replay what these
jobs made a real Spark JVM send. Run one as

    fakejvm record --pyspark 4.0.5 --out golden/pyspark-4.0.5/udf_sql_squared -- \
        {python} harness/python/spark_jobs/udf_jobs.py udf_sql_squared

As in jobs.py: local[1], one shuffle partition (so a grouped job is one task on one worker),
worker reuse on (Spark's default, set explicitly) and Arrow on for pyspark conversions
(spark.sql.execution.arrow.pyspark.enabled). Each job checks its own result, so a golden is never
recorded from a job that went wrong. A job a version lacks (arrow_udf before 4.1) exits 3 with
one line saying so.
"""

import argparse
import sys

import pyspark
from pyspark.sql import SparkSession
from pyspark.sql.types import DoubleType, StructField, StructType

JOBS = {}
VERSION = tuple(int(p) for p in pyspark.__version__.split(".")[:2])


def job(f):
    JOBS[f.__name__] = f
    return f


def session():
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("fakejvm-golden-udf")
        .config("spark.ui.enabled", "false")
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def expect(got, want):
    if got != want:
        raise SystemExit("job result differs: got %r, want %r" % (got, want))


def rows(df):
    return [tuple(r) for r in df.collect()]


GROUPS = [(1, 1.0), (1, 2.0), (2, 3.0), (2, 5.0), (2, 10.0)]


@job
def udf_sql_squared(spark):
    """SQL_BATCHED_UDF (100): a registered SQL UDF over a double column built from an RDD of
    numpy doubles (createDataFrame(rdd, schema)), a temp view and SELECT squared(value)."""
    import numpy as np

    spark.udf.register("squared", lambda x: x ** 2, DoubleType())
    values = [np.float64(v) for v in (1.0, 2.0, 3.0, 0.5)]
    # verifySchema refuses numpy.float64 for DoubleType (CANNOT_ACCEPT_OBJECT_IN_TYPE, seen on
    # 3.5.9), so the RDD stage turns each into a Python float, as a user has to.
    rdd = spark.sparkContext.parallelize(values, 1).map(lambda v: (float(v),))
    schema = StructType([StructField("value", DoubleType(), True)])
    spark.createDataFrame(rdd, schema).createOrReplaceTempView("test")
    got = rows(spark.sql("SELECT squared(value) FROM test"))
    expect(got, [(1.0,), (4.0,), (9.0,), (0.25,)])


TEXTS = ["h\u00e9llo w\u00f6rld", None, "\u65e5\u672c\u8a9e \u30c6\u30ad\u30b9\u30c8", "", "emoji \U0001F600 \U0001F389", "plain ascii text"]


@job
def udf_pandas_tokenizer(spark):
    """SQL_SCALAR_PANDAS_UDF (200): a tokenizer str -> array<string> over non-ASCII text and
    nulls."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, StringType

    @pandas_udf(ArrayType(StringType()))
    def tokenize(s: pd.Series) -> pd.Series:
        return s.map(lambda t: None if t is None else t.split(" "))

    df = spark.createDataFrame([(t,) for t in TEXTS], "text string")
    got = [r[0] for r in df.select(tokenize("text")).collect()]
    expect(got, [None if t is None else t.split(" ") for t in TEXTS])


@job
def udf_grouped_agg_mean(spark):
    """SQL_GROUPED_AGG_PANDAS_UDF (202): df.groupby("id").agg(mean_udf(df["v"]))."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")
    def mean_udf(v: pd.Series) -> float:
        return v.mean()

    df = spark.createDataFrame(GROUPS, ("id", "v"))
    got = rows(df.groupby("id").agg(mean_udf(df["v"])).orderBy("id"))
    expect(got, [(1, 1.5), (2, 6.0)])


@job
def udf_apply_in_pandas(spark):
    """SQL_GROUPED_MAP_PANDAS_UDF (201): groupby("id").applyInPandas, subtracting the group mean."""

    def subtract_mean(pdf):
        return pdf.assign(v=pdf.v - pdf.v.mean())

    df = spark.createDataFrame(GROUPS, ("id", "v"))
    got = rows(df.groupby("id").applyInPandas(subtract_mean, schema="id long, v double").orderBy("id", "v"))
    expect(got, [(1, -0.5), (1, 0.5), (2, -3.0), (2, -1.0), (2, 4.0)])


@job
def udf_map_in_pandas(spark):
    """SQL_MAP_PANDAS_ITER_UDF (205): mapInPandas keeping the rows of id 1."""

    def only_ones(it):
        for pdf in it:
            yield pdf[pdf.id == 1]

    df = spark.createDataFrame(GROUPS, ("id", "v"))
    got = rows(df.mapInPandas(only_ones, schema=df.schema))
    expect(got, [(1, 1.0), (1, 2.0)])


@job
def udf_map_in_arrow(spark):
    """SQL_MAP_ARROW_ITER_UDF (207): mapInArrow doubling v."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def double_v(it):
        for batch in it:
            yield pa.RecordBatch.from_arrays([batch.column(0), pc.multiply(batch.column(1), 2.0)], names=["id", "v"])

    df = spark.createDataFrame(GROUPS, ("id", "v"))
    got = rows(df.mapInArrow(double_v, schema=df.schema))
    expect(got, [(i, v * 2) for i, v in GROUPS])


@job
def udf_cogroup_apply_in_pandas(spark):
    """SQL_COGROUPED_MAP_PANDAS_UDF (206): cogroup(...).applyInPandas joining two frames by id."""
    import pandas as pd

    def merge(left, right):
        return pd.merge(left, right, on="id")

    left = spark.createDataFrame(GROUPS, ("id", "v"))
    right = spark.createDataFrame([(1, 10.0), (2, 20.0)], ("id", "w"))
    got = rows(
        left.groupby("id")
        .cogroup(right.groupby("id"))
        .applyInPandas(merge, schema="id long, v double, w double")
        .orderBy("id", "v")
    )
    expect(got, [(i, v, 10.0 * i) for i, v in GROUPS])


@job
def udf_window_mean(spark):
    """SQL_WINDOW_AGG_PANDAS_UDF (203): a pandas mean over an unbounded window per id."""
    import pandas as pd
    from pyspark.sql import Window
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")
    def mean_udf(v: pd.Series) -> float:
        return v.mean()

    df = spark.createDataFrame(GROUPS, ("id", "v"))
    w = Window.partitionBy("id").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    got = rows(df.withColumn("m", mean_udf(df["v"]).over(w)).orderBy("id", "v"))
    expect(got, [(i, v, 1.5 if i == 1 else 6.0) for i, v in GROUPS])


@job
def udf_arrow_udf(spark):
    """SQL_SCALAR_ARROW_UDF (250, pyspark 4.1+): arrow_udf v + 1 over pyarrow arrays."""
    if VERSION < (4, 1):
        print("pyspark %s has no arrow_udf (SQL_SCALAR_ARROW_UDF is 4.1+)" % pyspark.__version__, file=sys.stderr)
        raise SystemExit(3)
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql.functions import arrow_udf

    @arrow_udf("double")
    def plus_one(v: pa.Array) -> pa.Array:
        return pc.add(v, 1.0)

    df = spark.createDataFrame(GROUPS, ("id", "v"))
    got = [r[0] for r in df.select(plus_one("v")).collect()]
    expect(got, [v + 1 for _, v in GROUPS])


@job
def udf_udtf(spark):
    """SQL_TABLE_UDF (300): a Python UDTF in a LATERAL join, one output row per word."""
    from pyspark.sql.functions import udtf

    @udtf(returnType="word: string, n: int")
    class SplitWords:
        def eval(self, text: str):
            for w in text.split(" "):
                yield (w, len(w))

    spark.udtf.register("split_words", SplitWords)
    got = rows(spark.sql("SELECT s.word, s.n FROM VALUES ('a bb'), ('h\u00e9llo') AS t(text), LATERAL split_words(text) s"))
    expect(got, [("a", 1), ("bb", 2), ("h\u00e9llo", 5)])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job", choices=sorted(JOBS))
    args = p.parse_args()
    spark = session()
    try:
        JOBS[args.job](spark)
    finally:
        spark.stop()
    print("job %s done" % args.job, file=sys.stderr)


if __name__ == "__main__":
    main()
