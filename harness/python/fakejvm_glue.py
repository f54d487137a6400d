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
#   doctor - what `fakejvm doctor` checks in a shipped env: the Python pyspark supports, and
#            py4j, pandas, pyarrow and numpy against the versions this pyspark asks for, in its
#            metadata and in its own runtime checks (pyspark.sql.pandas.utils).
#   modules - list the worker modules of the installed pyspark under a package: the modules a
#            daemon (4.0+, `worker_module.main(infile, outfile)`) or `python -m` can run as a
#            worker. Read with this interpreter's own `ast`, so nothing is imported: a module
#            whose optional dependencies are missing (Spark Connect's grpcio) is still listed.
# Rust embeds this file (include_str!) and runs it as `python -c <this> <mode>`.
# Protocol with Rust: JSON on stdin (build only), one JSON object on stdout.
import json
import os
import re
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
    everything = installed()
    wanted = ("pyspark", "pandas", "pyarrow", "py4j")
    packages = {n: v for n, v in everything.items() if n.lower() in wanted}
    found = {
        "python": "%d.%d" % sys.version_info[:2],
        "python_full": "%d.%d.%d" % sys.version_info[:3],
        "packages": packages,
    }
    found.update(find_pyspark())
    answer(found)


def find_pyspark():
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        return {"pyspark": None, "pyspark_dir": None}
    pyspark_dir = list(spec.submodule_search_locations)[0]
    # version.py is what pyspark/__init__.py itself reads; it also exists in a Spark source
    # checkout on PYTHONPATH, where there is no package metadata.
    scope = {}
    with open(os.path.join(pyspark_dir, "version.py"), encoding="utf-8") as f:
        exec(compile(f.read(), "pyspark/version.py", "exec"), scope)
    return {"pyspark": scope["__version__"], "pyspark_dir": pyspark_dir}


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


# The packages `fakejvm doctor` checks: pyspark's one hard dependency, and what its pandas and
# Arrow UDFs import (pyspark's `sql` extra). Each with the runtime check pyspark itself runs
# before a pandas or Arrow UDF, where this pyspark has one.
DOCTOR_PACKAGES = (
    ("py4j", None),
    ("pandas", "require_minimum_pandas_version"),
    ("pyarrow", "require_minimum_pyarrow_version"),
    ("numpy", "require_minimum_numpy_version"),
)


def doctor():
    import importlib
    from importlib import metadata

    found = {
        "python": "%d.%d" % sys.version_info[:2],
        "python_full": "%d.%d.%d" % sys.version_info[:3],
        "executable": sys.executable,
        "pex": pex_info(),
        "requires_python": None,
        "python_classifiers": [],
        "packages": [],
    }
    found.update(find_pyspark())
    if found["pyspark"] is None:
        answer(found)
        return

    wanted = {}
    try:
        meta = metadata.metadata("pyspark")
        found["requires_python"] = meta.get("Requires-Python")
        prefix = "Programming Language :: Python :: 3."
        found["python_classifiers"] = [
            c.rsplit("::", 1)[1].strip()
            for c in (meta.get_all("Classifier") or [])
            if c.startswith(prefix) and c[len(prefix):].isdigit()
        ]
        # 'pandas>=2.0.0; extra == "sql"', 'py4j<0.10.9.10,>=0.10.9.7', older 'py4j (==0.10.9.7)'
        for req in metadata.requires("pyspark") or []:
            m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*\(?([^;)]*)\)?\s*(?:;(.*))?$", req)
            if not m:
                continue
            name, spec, marker = m.group(1).lower(), m.group(2).strip(), (m.group(3) or "")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            extra = extra.group(1).replace("-", "_") if extra else None
            # The hard requirements, then the `sql` extra (pandas and Arrow UDFs), then
            # pandas-on-Spark's, for a pyspark whose sql extra lacks a package.
            rank = {None: 0, "sql": 1, "pandas_on_spark": 2}.get(extra)
            if rank is not None and (name not in wanted or rank < wanted[name][0]):
                wanted[name] = (rank, spec, extra)
    except metadata.PackageNotFoundError:
        pass  # a Spark checkout on PYTHONPATH: no metadata, only the runtime checks

    try:
        from pyspark.sql.pandas import utils as pyspark_checks
        checks_error = None
    except Exception as e:
        pyspark_checks, checks_error = None, one_line_error(e)

    for name, check_name in DOCTOR_PACKAGES:
        rank, spec, extra = wanted.get(name, (None, None, None))
        entry = {
            "name": name,
            "wanted": spec or None,
            "extra": extra,
            "runtime_minimum": None,
            "installed": None,
            "problem": None,
            "checked_by": None,
            "warnings": [],
        }
        try:
            entry["installed"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
        try:
            module = importlib.import_module(name)
            entry["installed"] = getattr(module, "__version__", entry["installed"])
        except Exception as e:
            entry["problem"] = (
                "not installed" if entry["installed"] is None and isinstance(e, ImportError)
                else "installed (%s) but `import %s` fails: %s" % (entry["installed"], name, one_line_error(e))
            )
        check = getattr(pyspark_checks, check_name, None) if check_name else None
        if check is not None:
            entry["checked_by"] = "pyspark.sql.pandas.utils." + check_name
            # The minimum is the check's first version literal (`minimum_pandas_version =
            # "2.0.0"`; 4.2 compares with "3.0.0" after it, to warn). It can differ from the
            # metadata's: 4.2.1 asks numpy>=1.21 there and 1.22 here.
            literals = [c for c in check.__code__.co_consts
                        if isinstance(c, str) and re.fullmatch(r"\d+(\.\d+)+", c)]
            if literals:
                entry["runtime_minimum"] = literals[0]
            if entry["problem"] is None:
                import warnings

                with warnings.catch_warnings(record=True) as said:
                    warnings.simplefilter("always")
                    try:
                        check()
                    except Exception as e:
                        entry["problem"] = "pyspark's own check fails: " + one_line_error(e)
                entry["warnings"] = [one_line_error(w.message) for w in said]
        elif check_name and checks_error:
            entry["checked_by"] = "unavailable: " + checks_error
        if entry["problem"] is None and spec and not satisfies(entry["installed"], spec):
            entry["problem"] = "%s is installed, pyspark asks for %s%s" % (entry["installed"], name, spec)
        found["packages"].append(entry)
    answer(found)


def pex_info():
    """The PEX this runs from (pex's runtime names it in $PEX) and the requirements it was built
    from, so a fix can say how to rebuild it."""
    path = os.environ.get("PEX")
    if not path:
        return None
    info = {"path": path, "requirements": []}
    try:
        if os.path.isdir(path):
            with open(os.path.join(path, "PEX-INFO"), encoding="utf-8") as f:
                text = f.read()
        else:
            import zipfile

            with zipfile.ZipFile(path) as z:
                text = z.read("PEX-INFO").decode("utf-8")
        info["requirements"] = list(json.loads(text).get("requirements") or [])
    except Exception:
        pass  # the path is still worth naming
    return info


def one_line_error(e):
    text = " | ".join(l.strip() for l in str(e).splitlines() if l.strip())
    return "%s: %s" % (type(e).__name__, text) if text else type(e).__name__


def version_key(v):
    """'2.3.3' -> (2, 3, 3); stops at the first part that is not a number ('2.1.0rc1' -> (2, 1))."""
    out = []
    for part in str(v).split("."):
        digits = re.match(r"\d*", part).group(0) if part else ""
        if not digits:
            break
        out.append(int(digits))
        if digits != part:
            break
    return tuple(out)


def satisfies(version, spec):
    """A plain version against comma-separated comparisons (no packaging module in a bare env)."""
    if version is None:
        return False
    have = version_key(version)
    for clause in spec.split(","):
        m = re.match(r"\s*(~=|===|==|!=|>=|<=|>|<)\s*([0-9][0-9.]*)\*?\s*$", clause)
        if not m:
            continue  # a form this does not read: leave it to pyspark's own check
        op, want = m.group(1), version_key(m.group(2))
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        ok = {"~=": a >= b, "==": a == b, "===": a == b, "!=": a != b, ">=": a >= b,
              "<=": a <= b, ">": a > b, "<": a < b}[op]
        if not ok:
            return False
    return True


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
    {"probe": probe, "distributions": distributions, "build": build, "doctor": doctor,
     "modules": modules}[sys.argv[1]]()
