//! SQL UDF function pickles, built by the target pyspark itself (PROTOCOL-UDF.md §3.7).
//!
//! The driver's `sql/udf.py:_wrap_function` pickles `(func, returnType)` with
//! CloudPickleSerializer (the UDTF class alone for 300-302), the same call in 3.5.9-4.3.0; each
//! chained function of a UDF is one such frame. Built and cached exactly as NON_UDF commands
//! ([`super::build_commands`]): one glue run for whatever is not cached yet.

use super::command::{cache_key, looks_like_pickle, run_glue, Answer};
use super::{cache_root, EnvError, PythonEnv};
use crate::atomic::{write_atomic, WriteOptions};
use base64::Engine;
use std::path::PathBuf;

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
    let dir = cache_root().join("commands");
    let paths: Vec<PathBuf> = specs
        .iter()
        .map(|spec| dir.join(format!("udf-{}.bin", cache_key(env, spec))))
        .collect();
    let mut built: Vec<Option<Vec<u8>>> = paths
        .iter()
        .map(|p| std::fs::read(p).ok().filter(|b| looks_like_pickle(b)))
        .collect();
    let missing: Vec<usize> = (0..specs.len()).filter(|&i| built[i].is_none()).collect();
    if !missing.is_empty() {
        let wanted: Vec<&UdfFunctionSpec> = missing.iter().map(|&i| &specs[i]).collect();
        for (&i, answer) in missing.iter().zip(run_glue(env, &wanted)?) {
            match answer {
                Answer::Ok(b64) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .ok()
                        .filter(|b| looks_like_pickle(b))
                        .ok_or_else(|| EnvError::Glue {
                            python: env.python.clone(),
                            detail: format!("UDF function #{i} came back as no pickle"),
                        })?;
                    // A failed cache write only costs a rebuild next time.
                    let _ = write_atomic(&paths[i], &bytes, WriteOptions::CACHE);
                    built[i] = Some(bytes);
                }
                Answer::Error(python_error) => {
                    let head: String = specs[i]
                        .function
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(60)
                        .collect();
                    return Err(EnvError::BadFunction {
                        index: i,
                        head,
                        python_error,
                    });
                }
            }
        }
    }
    Ok(built.into_iter().flatten().collect())
}
