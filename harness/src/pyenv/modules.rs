//! The worker modules of the installed pyspark, as its own interpreter lists them (the glue's
//! `modules` mode): so a scenario can run every one a version ships, a new version's new module
//! included, without naming them.

use super::{child, EnvError, PythonEnv, GLUE};
use std::process::Command;
use std::time::Duration;

/// Reading a few hundred source files: seconds at worst on a cold disk.
const LIST_LIMIT: Duration = Duration::from_secs(60);

/// What the env has under a package.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct WorkerModules {
    /// No such package or module in the installed pyspark.
    pub missing: bool,
    /// Sorted dotted names of every module under the package (or the module itself) with a
    /// top-level `main(infile, outfile)` and an `if __name__ == "__main__":` block.
    pub modules: Vec<String>,
}

/// The worker modules under `package` (a package or a single module) of `env`'s pyspark.
pub fn worker_modules(env: &PythonEnv, package: &str) -> Result<WorkerModules, EnvError> {
    let failed = |detail: String| EnvError::Glue {
        python: env.python.clone(),
        detail,
    };
    let mut cmd = Command::new(&env.python);
    cmd.arg("-c").arg(GLUE).arg("modules");
    let input = serde_json::to_vec(&serde_json::json!({ "package": package }))
        .expect("a string serializes");
    let ran = child::run(cmd, Some(input), LIST_LIMIT, None)
        .map_err(|e| failed(format!("cannot start it to list worker modules: {e}")))?;
    if ran.status.is_none() {
        return Err(EnvError::Timeout {
            what: format!("listing the worker modules of {package}"),
            after: LIST_LIMIT,
            hint: "check that the interpreter and its site-packages are readable".into(),
        });
    }
    if !ran.succeeded() {
        return Err(failed(format!(
            "listing worker modules exited with {}: {}",
            ran.status_text(),
            ran.tail()
        )));
    }
    serde_json::from_slice(&ran.stdout)
        .map_err(|e| failed(format!("unexpected answer listing worker modules: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::tests::default_env;
    use super::*;

    #[test]
    fn the_default_env_lists_its_worker_modules_without_importing_them() {
        let env = default_env();
        let all = worker_modules(&env, "pyspark").unwrap();
        assert!(!all.missing);
        // pyspark.worker itself, and the Spark Connect workers whose grpcio the env lacks
        // (listing reads their source; importing them would fail).
        for m in [
            "pyspark.worker",
            "pyspark.sql.connect.streaming.worker.foreach_batch_worker",
        ] {
            assert!(
                all.modules.iter().any(|x| x == m),
                "{m} in {:?}",
                all.modules
            );
        }
        // The daemon forks workers but is not one; doctest mains are not either.
        assert!(!all
            .modules
            .iter()
            .any(|m| m == "pyspark.daemon" || m == "pyspark.rdd"));
        let one = worker_modules(&env, "pyspark.worker").unwrap();
        assert_eq!(one.modules, vec!["pyspark.worker".to_string()]);
        let none = worker_modules(&env, "pyspark.no_such_package").unwrap();
        assert!(none.missing && none.modules.is_empty());
    }
}
