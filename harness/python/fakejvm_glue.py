# fakejvm's only Python code. It exists because two jobs can only be done by the target pyspark
# itself:
#   probe  - report the interpreter's version and its pyspark (without importing pyspark, which
#            costs a few hundred ms and would need nothing we use);
#   build  - cloudpickle a scenario's RDD function into the NON_UDF command, the tuple
#            (func, profiler, deserializer, serializer) that the driver sends. The bytes hold
#            instances of pyspark's own serializer classes and a function pickled by the bundled
#            pyspark.cloudpickle, so only the target version can write them faithfully.
#            A spec with a "return_type" is a SQL UDF function instead: (func, returnType), or
#            the UDTF class alone, as sql/udf.py's _wrap_function pickles them.
#   modules - list the worker modules of the installed pyspark under a package: the modules a
#            daemon (4.0+, `worker_module.main(infile, outfile)`) or `python -m` can run as a
#            worker. Read with this interpreter's own `ast`, so nothing is imported: a module
#            whose optional dependencies are missing (Spark Connect's grpcio) is still listed.
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


def probe():
    import importlib.util
    from importlib import metadata

    packages = {}
    for name in ("pyspark", "pandas", "pyarrow", "py4j"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
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


def modules():
    import ast
    import importlib.util

    package = json.load(sys.stdin)["package"]
    parts = package.split(".")
    spec = importlib.util.find_spec(parts[0])  # a top-level name: found without importing it
    if spec is None or not spec.submodule_search_locations:
        answer({"missing": True, "modules": []})
        return
    base = os.path.join(list(spec.submodule_search_locations)[0], *parts[1:])
    if os.path.isdir(base):
        files = []
        for folder, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            rel = os.path.relpath(folder, base)
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for n in sorted(names):
                if n.endswith(".py") and n != "__init__.py":
                    files.append((prefix + "." + n[:-3], os.path.join(folder, n)))
    elif os.path.isfile(base + ".py"):
        files = [(package, base + ".py")]
    else:
        answer({"missing": True, "modules": []})
        return
    found = []
    for name, path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if "__main__" not in text or "def main(" not in text:
            continue
        try:
            tree = ast.parse(text, path)
        except SyntaxError:
            continue
        if is_worker_module(tree):
            found.append(name)
    answer({"missing": False, "modules": sorted(found)})


def is_worker_module(tree):
    """A top-level `def main(infile, outfile)` (what daemon.py calls) and an
    `if __name__ == "__main__":` block (what `python -m` runs)."""
    import ast

    has_main = any(
        isinstance(n, ast.FunctionDef) and n.name == "main" and len(n.args.args) >= 2
        for n in tree.body
    )
    runs_as_main = any(
        isinstance(n, ast.If)
        and isinstance(n.test, ast.Compare)
        and isinstance(n.test.left, ast.Name)
        and n.test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in n.test.comparators)
        for n in tree.body
    )
    return has_main and runs_as_main


if __name__ == "__main__":
    {"probe": probe, "build": build, "modules": modules}[sys.argv[1]]()
