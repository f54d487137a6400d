# fakejvm's only Python code. It exists because two jobs can only be done by the target pyspark
# itself:
#   probe  - report the interpreter's version and its pyspark (without importing pyspark, which
#            costs a few hundred ms and would need nothing we use);
#   distributions - every installed distribution and its version (to compare an env with its lock);
#   build  - cloudpickle a scenario's RDD function into the NON_UDF command, the tuple
#            (func, profiler, deserializer, serializer) that the driver sends. The bytes hold
#            instances of pyspark's own serializer classes and a function pickled by the bundled
#            pyspark.cloudpickle, so only the target version can write them faithfully.
#            A spec with a "return_type" is a SQL UDF function instead: (func, returnType), or
#            the UDTF class alone, as sql/udf.py's _wrap_function pickles them.
# Rust embeds this file (include_str!) and runs it as `python -c <this> <mode>`.
# Protocol with Rust: JSON on stdin (build only), one JSON object on stdout.
import json
import os
import sys

# `python -c` puts the current directory first on sys.path; a ./pyspark there (a Spark
# checkout) would shadow the interpreter's own.
if sys.path and sys.path[0] == "":
    del sys.path[0]

# Whatever the scenario's code prints must not corrupt our JSON answer.
ANSWER = sys.stdout
sys.stdout = sys.stderr


def answer(obj):
    ANSWER.write(json.dumps(obj))
    ANSWER.flush()


def installed():
    """name -> version of every distribution on sys.path; Python 3.7 has no importlib.metadata
    (pyspark 3.4 supports 3.7), and its venvs have pkg_resources instead."""
    try:
        from importlib import metadata
    except ImportError:
        import pkg_resources

        return {d.project_name: d.version for d in pkg_resources.working_set}
    found = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name and name not in found:  # the first on sys.path wins, as for imports
            found[name] = d.version
    return found


def distributions():
    answer({"distributions": installed()})


def probe():
    import importlib.util

    everything = installed()
    wanted = ("pyspark", "pandas", "pyarrow", "py4j")
    packages = {n: v for n, v in everything.items() if n.lower() in wanted}
    found = {
        "python": "%d.%d" % sys.version_info[:2],
        "python_full": "%d.%d.%d" % sys.version_info[:3],
        "pyspark": None,
        "pyspark_dir": None,
        "packages": packages,
    }
    spec = importlib.util.find_spec("pyspark")
    if spec is not None and spec.submodule_search_locations:
        pyspark_dir = list(spec.submodule_search_locations)[0]
        found["pyspark_dir"] = pyspark_dir
        # version.py is what pyspark/__init__.py itself reads; it also exists in a Spark source
        # checkout on PYTHONPATH, where there is no package metadata.
        scope = {}
        with open(os.path.join(pyspark_dir, "version.py"), encoding="utf-8") as f:
            exec(compile(f.read(), "pyspark/version.py", "exec"), scope)
        found["pyspark"] = scope["__version__"]
    answer(found)


def build():
    from pyspark import serializers as s
    from pyspark.serializers import CloudPickleSerializer

    def serializer(spec):
        kind = spec["kind"]
        if kind == "batched":
            return s.BatchedSerializer(s.CPickleSerializer(), spec["size"])
        if kind == "auto_batched":
            return s.AutoBatchedSerializer(s.CPickleSerializer())
        if kind == "pickle":
            return s.CPickleSerializer()
        if kind == "utf8":
            return s.UTF8Deserializer()
        if kind == "no_op":
            return s.NoOpSerializer()
        if kind == "pair":
            return s.PairDeserializer(serializer(spec["key"]), serializer(spec["value"]))
        if kind == "cartesian":
            return s.CartesianDeserializer(serializer(spec["key"]), serializer(spec["value"]))
        raise ValueError("unknown serializer kind %r" % kind)

    import base64
    import traceback

    results = []
    for spec in json.load(sys.stdin)["specs"]:
        try:
            # A fresh namespace named __main__: like a driver script's own functions, `func` is
            # then pickled by value, with only the globals its code refers to.
            scope = {"__name__": "__main__", "__builtins__": __builtins__}
            exec(compile(spec["function"], "<scenario function>", "exec"), scope)
            if "func" not in scope:
                raise NameError("the function source must bind the name `func`")
            if "return_type" in spec:
                command = udf_command(scope["func"], spec)
            else:
                command = (scope["func"], None, serializer(spec["deserializer"]),
                           serializer(spec["serializer"]))
            # The driver's own path: rdd.py's _prepare_for_python_RDD calls exactly this.
            pickled = CloudPickleSerializer().dumps(command)
            results.append({"ok": base64.b64encode(pickled).decode("ascii")})
        except BaseException as e:  # a SyntaxError is as much the scenario's fault as a NameError
            line = traceback.format_exception_only(type(e), e)
            results.append({"error": "".join(line).strip()})
    answer({"results": results})


def udf_command(func, spec):
    if spec.get("udtf"):
        return func
    # Spark's JSON form of a DataType: 3.5 can only parse DDL through a JVM, the JSON in Python.
    from pyspark.sql.types import _parse_datatype_json_string

    return (func, _parse_datatype_json_string(spec["return_type"]))


if __name__ == "__main__":
    {"probe": probe, "distributions": distributions, "build": build}[sys.argv[1]]()
