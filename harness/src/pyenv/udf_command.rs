//! SQL UDF function pickles, built by the target pyspark itself (PROTOCOL-UDF.md §3.7).
//!
//! The driver's `sql/udf.py:_wrap_function` pickles `(func, returnType)` with
//! CloudPickleSerializer (the UDTF class alone for 300-302), the same call in 3.5.9-4.3.0; each
//! chained function of a UDF is one such frame. Built and cached exactly as NON_UDF commands
//! ([`super::build_commands`]): one glue run for whatever is not cached yet.

use super::command::build_cached;
use super::{EnvError, PythonEnv};

/// One UDF function. `function` is Python source binding `func` (the user function, or the UDTF
/// class); `return_type` is Spark's JSON form of a DataType (`"double"`,
/// `{"type":"array","elementType":"string","containsNull":true}`), since 3.5 parses DDL only
/// through a JVM.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct UdfFunctionSpec {
    pub function: String,
    pub return_type: String,
    /// Pickle the class alone (a UDTF handler); `return_type` then goes into the command
    /// section as the UDTF's StructType JSON instead.
    #[serde(default)]
    pub udtf: bool,
}

/// The frame payloads for `specs`, in order.
pub fn build_udf_functions(
    env: &PythonEnv,
    specs: &[UdfFunctionSpec],
) -> Result<Vec<Vec<u8>>, EnvError> {
    build_cached(env, specs, "udf-", "UDF function", |s| &s.function)
}
