//! The two ways a command fails without a verdict, and their exit codes.
//!
//! - [`BadInput`]: the user has to fix something (a scenario, golden, reproducer or state file,
//!   a flag, a pyspark version, an interpreter that is not a Python with pyspark). Exit 2.
//! - [`HarnessError`]: fakejvm itself failed (it cannot write a report or a reproducer, an env
//!   will not provision, a daemon binary cannot be spawned, the executor broke). Exit 3.
//!
//! Both print as one line: Python tracebacks and pip logs are folded with [`one_line`], so a CI
//! log or a shell `$(...)` always gets a single line naming what went wrong.
//! Any other error that reaches `main` is fakejvm's own failure too (exit 3).

use crate::pyenv::EnvError;
use std::fmt;
use std::path::Path;

/// The user's input is wrong: one line naming the file (or flag) and the problem. Exit 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", one_line(.0))]
pub struct BadInput(pub String);

impl BadInput {
    /// `<file>: <problem>`.
    pub fn new(file: &Path, problem: impl fmt::Display) -> BadInput {
        BadInput(one_line(&format!("{}: {problem}", file.display())))
    }

    /// A problem that names no file (a flag, a version).
    pub fn msg(problem: impl fmt::Display) -> BadInput {
        BadInput(one_line(&problem.to_string()))
    }
}

/// fakejvm's own failure, not the user's input and not a test verdict. Exit 3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", one_line(.0))]
pub struct HarnessError(pub String);

impl HarnessError {
    pub fn new(what: impl fmt::Display) -> HarnessError {
        HarnessError(one_line(&what.to_string()))
    }

    /// `cannot <action> <path>: <error>`.
    pub fn io(action: &str, path: &Path, e: impl fmt::Display) -> HarnessError {
        HarnessError::new(format!("cannot {action} {}: {e}", path.display()))
    }
}

/// An env problem, sorted: an interpreter or version the user chose that does not work is bad
/// input; an env fakejvm cannot build, probe or drive is its own failure. `file`, when given,
/// is the file that asked for the env (a reproducer, a golden index).
pub fn env_failure(file: Option<&Path>, e: EnvError) -> anyhow::Error {
    let text = match file {
        Some(f) => format!("{}: {e}", f.display()),
        None => e.to_string(),
    };
    if e.is_bad_input() {
        BadInput::msg(text).into()
    } else {
        HarnessError::new(text).into()
    }
}

/// Exit code of a failed command: 2 for bad input, 3 for anything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<BadInput>().is_some() {
        2
    } else {
        3
    }
}

/// The one line the CLI prints for a failed command (without the `fakejvm: ` prefix).
pub fn message(e: &anyhow::Error) -> String {
    one_line(&format!("{e:#}"))
}

/// Text that can span lines (a Python traceback, pip's output) as one line: lines trimmed,
/// blank ones dropped, the rest joined with " | ".
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_print_as_one_line() {
        let b = BadInput::new(
            Path::new("s.json"),
            "Traceback:\n  File x\nValueError: no\n",
        );
        assert_eq!(
            b.to_string(),
            "s.json: Traceback: | File x | ValueError: no"
        );
        // Built by hand, the text is still folded when printed.
        assert_eq!(BadInput("a\nb".into()).to_string(), "a | b");
        assert_eq!(
            HarnessError::new("pip failed:\nERROR: x").to_string(),
            "pip failed: | ERROR: x"
        );
    }

    #[test]
    fn exit_codes_follow_the_kind_through_context() {
        use anyhow::Context;
        let bad: anyhow::Error = BadInput::msg("--jobs 0").into();
        assert_eq!(exit_code(&bad), 2);
        let wrapped = Err::<(), _>(BadInput::msg("x"))
            .context("while loading")
            .unwrap_err();
        assert_eq!(exit_code(&wrapped), 2);
        let own: anyhow::Error = HarnessError::new("cannot write").into();
        assert_eq!(exit_code(&own), 3);
        assert_eq!(
            exit_code(&anyhow::anyhow!("anything else\nspanning lines")),
            3
        );
        assert_eq!(
            message(&anyhow::anyhow!("anything else\nspanning lines")),
            "anything else | spanning lines"
        );
    }

    #[test]
    fn env_failures_are_sorted_by_whose_fault_they_are() {
        let missing = EnvError::PythonMissing {
            python: "/nonexistent/python".into(),
        };
        assert_eq!(exit_code(&env_failure(None, missing)), 2);
        let pip = EnvError::ProvisionFailed {
            what: "pyspark 4.0.5".into(),
            dir: "/x".into(),
            step: "pip".into(),
            detail: "a\nb".into(),
        };
        let e = env_failure(Some(Path::new("r.json")), pip);
        assert_eq!(exit_code(&e), 3);
        let text = message(&e);
        assert!(
            text.starts_with("r.json: provisioning pyspark 4.0.5") && !text.contains('\n'),
            "{text}"
        );
    }
}
