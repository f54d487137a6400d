//! NON_UDF command bytes, built by the target pyspark itself.
//!
//! The command frame of an RDD task holds the tuple (func, profiler, deserializer, serializer),
//! pickled by the driver with pyspark's CloudPickleSerializer (rdd.py `_prepare_for_python_RDD`,
//! unchanged from 3.5 to 4.3). Its bytes depend on the pyspark release, so fakejvm has the target
//! env write them (the glue's `build` mode) instead of imitating them:
//! - 3.5.9 bundles cloudpickle 2.2.1; 4.0.5 bundles 3.1.1 and 4.1-4.3 bundle 3.1.2. A 4.x command
//!   does not load in a 3.5 worker (it refers to `_function_setstate`, which 2.2.1 lacks), while a
//!   3.5 command loads in 4.3.
//! - From 4.0.5 each CloudPickleSerializer instance carries `allowed_names = None` in its state.
//! - For the same spec, 4.0.5, 4.1.4, 4.2.1 and 4.3.0 wrote identical bytes in our runs.
//!
//! Determinism (measured with 3.5.9 and 4.0.5): a plain lambda or def pickles to the same bytes
//! under any PYTHONHASHSEED; a function whose globals hold a set or frozenset depends on the hash
//! seed, so the glue runs with PYTHONHASHSEED=0; a class defined in the source gets a random
//! cloudpickle tracker id (uuid4) on every build, which the disk cache then pins.

use super::{cache_root, child, EnvError, PythonEnv, GLUE};
use crate::atomic::{write_atomic, WriteOptions};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Importing pyspark.serializers pulls in pyspark's package init: about a second, more when cold.
const BUILD_LIMIT: Duration = Duration::from_secs(120);

/// A command's (de)serializer, as scenario JSON spells it (`{"kind": "batched", "size": 2}`).
/// Each maps to one pyspark.serializers class; the pickling ones wrap CPickleSerializer (which is
/// CloudPickleSerializer unless PYSPARK_ENABLE_NAMEDTUPLE_PATCH=1, which the glue unsets).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SerializerSpec {
    /// BatchedSerializer(CPickleSerializer(), size): one pickled list of up to `size` items per
    /// frame; -1 means everything in one frame.
    Batched { size: i32 },
    /// AutoBatchedSerializer(CPickleSerializer()): the RDD default.
    AutoBatched,
    /// CPickleSerializer(): one pickled object per frame.
    Pickle,
    /// UTF8Deserializer(): one string per frame (textFile input).
    Utf8,
    /// NoOpSerializer(): raw bytes per frame.
    NoOp,
    /// PairDeserializer(key, value): zip's alternating key and value batches.
    Pair {
        key: Box<SerializerSpec>,
        value: Box<SerializerSpec>,
    },
    /// CartesianDeserializer(key, value): cartesian's alternating batches.
    Cartesian {
        key: Box<SerializerSpec>,
        value: Box<SerializerSpec>,
    },
}

/// One RDD task's command. `function` is Python source binding `func` to a callable taking
/// (split_index, iterator) and returning an iterable, e.g.
/// `func = lambda split, it: (x * 2 for x in it)`, or a multi-line def.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CommandSpec {
    pub function: String,
    pub deserializer: SerializerSpec,
    pub serializer: SerializerSpec,
}

/// The command frame payloads for `specs`, in order: what pyspark's driver would send.
/// Results are cached on disk under `<cache_root>/commands/`, keyed by interpreter, Python and
/// pyspark versions, the glue and the spec; whatever is not cached is built by ONE Python run.
pub fn build_commands(env: &PythonEnv, specs: &[CommandSpec]) -> Result<Vec<Vec<u8>>, EnvError> {
    build_cached(env, specs, "", "spec", |s| &s.function)
}

/// What every glue-built pickle goes through (RDD commands, UDF functions): each spec's cached
/// file under `<cache_root>/commands/<prefix><key>.bin` if it holds a pickle, and ONE glue run for
/// the rest, whose answers are cached in turn. `what` names a spec in errors; `function` gives
/// the Python source an error message quotes.
pub(super) fn build_cached<S: serde::Serialize>(
    env: &PythonEnv,
    specs: &[S],
    prefix: &str,
    what: &str,
    function: impl Fn(&S) -> &str,
) -> Result<Vec<Vec<u8>>, EnvError> {
    let dir = cache_root().join("commands");
    let paths: Vec<PathBuf> = specs
        .iter()
        .map(|spec| dir.join(format!("{prefix}{}.bin", cache_key(env, spec))))
        .collect();
    let mut built: Vec<Option<Vec<u8>>> = paths
        .iter()
        .map(|p| std::fs::read(p).ok().filter(|b| looks_like_pickle(b)))
        .collect();
    let missing: Vec<usize> = (0..specs.len()).filter(|&i| built[i].is_none()).collect();
    if missing.is_empty() {
        return Ok(built.into_iter().flatten().collect());
    }

    let wanted: Vec<&S> = missing.iter().map(|&i| &specs[i]).collect();
    let answers = run_glue(env, &wanted)?;
    for (&i, answer) in missing.iter().zip(answers) {
        match answer {
            Answer::Ok(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .ok()
                    .filter(|b| looks_like_pickle(b))
                    .ok_or_else(|| EnvError::Glue {
                        python: env.python.clone(),
                        detail: format!("{what} #{i} came back as no pickle"),
                    })?;
                // A failed cache write only costs a rebuild next time.
                let _ = write_atomic(&paths[i], &bytes, WriteOptions::CACHE);
                built[i] = Some(bytes);
            }
            Answer::Error(python_error) => {
                let head: String = function(&specs[i])
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
    Ok(built.into_iter().flatten().collect())
}

/// Pickle protocol 2+ starts with PROTO (0x80); pyspark pickles with protocol 5 on Python 3.8+.
pub(super) fn looks_like_pickle(bytes: &[u8]) -> bool {
    bytes.len() > 2 && bytes[0] == 0x80
}

pub(super) fn cache_key<S: serde::Serialize>(env: &PythonEnv, spec: &S) -> String {
    let mut h = Sha256::new();
    for part in [
        env.python.as_os_str().as_encoded_bytes(),
        env.python_version.as_bytes(),
        env.pyspark.to_string().as_bytes(),
        GLUE.as_bytes(),
        &serde_json::to_vec(spec).expect("a spec serializes"),
    ] {
        // Length-prefixed, so no two different part lists hash the same stream.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Answer {
    Ok(String),
    Error(String),
}

pub(super) fn run_glue<S: serde::Serialize>(
    env: &PythonEnv,
    specs: &[&S],
) -> Result<Vec<Answer>, EnvError> {
    let glue_failed = |detail: String| EnvError::Glue {
        python: env.python.clone(),
        detail,
    };
    let mut cmd = Command::new(&env.python);
    cmd.arg("-c")
        .arg(GLUE)
        .arg("build")
        .env("PYTHONHASHSEED", "0")
        .env_remove("PYSPARK_ENABLE_NAMEDTUPLE_PATCH");
    let input =
        serde_json::to_vec(&serde_json::json!({ "specs": specs })).expect("specs serialize");
    let ran = child::run(cmd, Some(input), BUILD_LIMIT, None)
        .map_err(|e| glue_failed(format!("cannot start it: {e}")))?;
    if ran.status.is_none() {
        return Err(EnvError::Timeout {
            what: format!(
                "building {} command(s) with {}",
                specs.len(),
                env.python.display()
            ),
            after: BUILD_LIMIT,
            hint: "a function's source runs at build time: make sure it does not loop or block"
                .into(),
        });
    }
    if !ran.succeeded() {
        return Err(glue_failed(format!(
            "it exited with {}: {}",
            ran.status_text(),
            ran.tail()
        )));
    }
    #[derive(serde::Deserialize)]
    struct Built {
        results: Vec<Answer>,
    }
    let built: Built = serde_json::from_slice(&ran.stdout)
        .map_err(|e| glue_failed(format!("unexpected answer: {e}")))?;
    if built.results.len() != specs.len() {
        return Err(glue_failed(format!(
            "{} answers for {} specs",
            built.results.len(),
            specs.len()
        )));
    }
    Ok(built.results)
}

#[cfg(test)]
mod tests {
    use super::super::tests::default_env;
    use super::*;

    fn spec(
        function: &str,
        deserializer: SerializerSpec,
        serializer: SerializerSpec,
    ) -> CommandSpec {
        CommandSpec {
            function: function.into(),
            deserializer,
            serializer,
        }
    }

    #[test]
    fn serializer_specs_read_as_scenario_json_spells_them() {
        let parse = |s: &str| serde_json::from_str::<SerializerSpec>(s);
        assert_eq!(
            parse(r#"{"kind":"batched","size":2}"#).unwrap(),
            SerializerSpec::Batched { size: 2 }
        );
        assert_eq!(
            parse(r#"{"kind":"auto_batched"}"#).unwrap(),
            SerializerSpec::AutoBatched
        );
        let pair =
            parse(r#"{"kind":"pair","key":{"kind":"pickle"},"value":{"kind":"utf8"}}"#).unwrap();
        assert_eq!(
            pair,
            SerializerSpec::Pair {
                key: Box::new(SerializerSpec::Pickle),
                value: Box::new(SerializerSpec::Utf8)
            }
        );
        assert_eq!(
            serde_json::to_string(&SerializerSpec::NoOp).unwrap(),
            r#"{"kind":"no_op"}"#
        );
        assert!(parse(r#"{"kind":"batched","size":2,"extra":1}"#).is_err());
        assert!(parse(r#"{"kind":"marshal"}"#).is_err());
    }

    #[test]
    fn builds_one_pickled_command_per_spec() {
        let env = default_env();
        let specs = [
            spec("func = lambda split, it: (x * 2 for x in it)", SerializerSpec::Batched { size: 2 }, SerializerSpec::AutoBatched),
            spec(
                "import math\n\ndef func(split, it):\n    for x in it:\n        yield math.sqrt(x)\n",
                SerializerSpec::Pair { key: Box::new(SerializerSpec::Pickle), value: Box::new(SerializerSpec::Utf8) },
                SerializerSpec::Pickle,
            ),
            spec("func = lambda split, it: it", SerializerSpec::Utf8, SerializerSpec::NoOp),
        ];
        let commands = build_commands(&env, &specs).unwrap();
        assert_eq!(commands.len(), 3);
        for (i, c) in commands.iter().enumerate() {
            assert!(
                c.len() > 100 && c[0] == 0x80 && c[1] == 5,
                "command #{i} is no protocol-5 pickle: {:02x?}",
                &c[..c.len().min(4)]
            );
        }
        // The serializers travel as instances of pyspark's own classes, by reference.
        let text = String::from_utf8_lossy(&commands[1]);
        assert!(
            text.contains("pyspark.serializers") && text.contains("PairDeserializer"),
            "{text}"
        );
        // Same answer again (from the cache, or rebuilt: the build is deterministic).
        assert_eq!(build_commands(&env, &specs).unwrap(), commands);
        assert!(build_commands(&env, &[]).unwrap().is_empty());
    }

    #[test]
    fn a_broken_function_names_its_spec_and_the_python_error() {
        let env = default_env();
        let good = spec(
            "func = lambda split, it: it",
            SerializerSpec::Pickle,
            SerializerSpec::Pickle,
        );
        let broken = spec(
            "func = lambda split, it: it +",
            SerializerSpec::Pickle,
            SerializerSpec::Pickle,
        );
        let err = build_commands(&env, &[good.clone(), broken]).unwrap_err();
        assert!(
            matches!(err, EnvError::BadFunction { index: 1, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("#1")
                && msg.contains("SyntaxError")
                && msg.contains("split_index, iterator"),
            "{msg}"
        );

        let unbound = spec(
            "f = lambda split, it: it",
            SerializerSpec::Pickle,
            SerializerSpec::Pickle,
        );
        let msg = build_commands(&env, &[unbound, good])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("#0") && msg.contains("func"), "{msg}");

        let undefined = spec(
            "func = undefined_name",
            SerializerSpec::Pickle,
            SerializerSpec::Pickle,
        );
        let msg = build_commands(&env, &[undefined]).unwrap_err().to_string();
        assert!(
            msg.contains("NameError") && msg.contains("undefined_name"),
            "{msg}"
        );
    }

    #[test]
    fn the_cache_key_separates_envs_and_specs() {
        let env = PythonEnv {
            python: "/envs/a/bin/python".into(),
            pyspark: "4.0.5".parse().unwrap(),
            python_version: "3.11".into(),
            pyspark_dir: "/envs/a/pyspark".into(),
            flavor: None,
        };
        let a = spec(
            "func = lambda s, it: it",
            SerializerSpec::Pickle,
            SerializerSpec::Pickle,
        );
        let mut b = a.clone();
        b.serializer = SerializerSpec::Batched { size: 1 };
        let mut other = env.clone();
        other.pyspark.minor += 1;
        assert_ne!(cache_key(&env, &a), cache_key(&env, &b));
        assert_ne!(cache_key(&env, &a), cache_key(&other, &a));
        assert_eq!(cache_key(&env, &a), cache_key(&env, &a.clone()));
    }
}
