//! `fakejvm doctor`: is a worker environment, as it is shipped to the cluster, ready?
//!
//! Users ship the executors' Python as a venv, a conda-pack / venv-pack archive or a PEX file,
//! and otherwise learn on the cluster that pyarrow is missing (`ModuleNotFoundError` in the
//! first pandas UDF) or that its pyspark is not the cluster's. The doctor asks the env itself
//! (the glue's `doctor` mode: pyspark's metadata and its own runtime checks), then runs a real
//! RDD task, a SQL UDF, a pandas UDF and an Arrow UDF through it with fakejvm as the executor.
//! One line per check, each failure with what to do about it; exit 0 ready, 1 not ready.

mod tasks;

use crate::error::{env_failure, BadInput};
use crate::protocol::{Dialect, UdfLayout};
use crate::pyenv::shipped::{self, Contents, Package, Shipped, ShippedError};
use crate::pyenv::{EnvError, PysparkVersion, PythonEnv};
use crate::scenario::{python_parts, Status, VersionReq};
use crate::verdict::Outcome;
use std::io::Write;
use std::path::PathBuf;
use tasks::Probe;

/// `fakejvm doctor --help`, after the options.
pub const AFTER_HELP: &str = "\
Checks, one line each (ok / FAIL / N/A), every FAIL with a `fix:` line under it:
  python      the interpreter's version against pyspark's Requires-Python and classifiers
  pyspark     installed, and of the --spark line (same major.minor; a patch difference is noted)
  py4j, pandas, pyarrow, numpy
              present and within what the installed pyspark asks (its metadata and its own
              require_minimum_*_version checks)
  RDD task, SQL UDF, pandas UDF, Arrow UDF
              run through a real daemon started with that interpreter; N/A with the reason
              when the env lacks what the kind needs, or its pyspark lacks the kind (Arrow UDF: 4.1+)

Exit codes: 0 ready, 1 not ready, 2 the path is not an env fakejvm can run (one line).

Example: fakejvm doctor --python ./env.pex --spark 4.0.5";

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// What PYSPARK_PYTHON will be on the cluster: an interpreter, a venv or conda env
    /// directory, a PEX file (run as the interpreter, as `PYSPARK_PYTHON=./env.pex` does) or a
    /// conda-pack / venv-pack archive (unpacked once into fakejvm's cache).
    #[arg(long, env = "FAKEJVM_PYTHON", value_name = "PATH")]
    pub python: PathBuf,
    /// The cluster's Spark version (4.0.5, or a line like 4.0): the env's pyspark must be of the
    /// same major.minor line; a different patch release is noted.
    #[arg(long, value_name = "X.Y[.Z]")]
    pub spark: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Ok,
    Fail,
    NotApplicable,
}

/// One line of the checklist, with what to do when it fails and anything worth knowing.
struct Item {
    mark: Mark,
    label: String,
    detail: String,
    fix: Option<String>,
    notes: Vec<String>,
}

impl Item {
    fn new(mark: Mark, label: &str, detail: impl Into<String>) -> Item {
        Item {
            mark,
            label: label.to_string(),
            detail: detail.into(),
            fix: None,
            notes: vec![],
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Item {
        self.fix = Some(fix.into());
        self
    }

    fn note(mut self, note: impl Into<String>) -> Item {
        self.notes.push(note.into());
        self
    }

    fn text(&self) -> String {
        let mark = match self.mark {
            Mark::Ok => "ok",
            Mark::Fail => "FAIL",
            Mark::NotApplicable => "N/A",
        };
        let mut out = format!("  {mark:<4}  {:<11} {}", self.label, self.detail);
        let indent = " ".repeat(2 + 4 + 2 + 11 + 1);
        if let Some(fix) = &self.fix {
            out.push_str(&format!("\n{indent}fix: {fix}"));
        }
        for n in &self.notes {
            out.push_str(&format!("\n{indent}note: {n}"));
        }
        out
    }
}

/// The checklist, printed line by line as it is decided (the tasks take a few seconds).
#[derive(Default)]
struct Checklist {
    items: Vec<Item>,
}

impl Checklist {
    fn add(&mut self, item: Item) {
        println!("{}", item.text());
        let _ = std::io::stdout().flush();
        self.items.push(item);
    }

    /// The last line, and the exit code: 0 ready, 1 not.
    fn finish(&self, given: &str) -> u8 {
        let failed: Vec<&str> = self
            .items
            .iter()
            .filter(|i| i.mark == Mark::Fail)
            .map(|i| i.label.as_str())
            .collect();
        let skipped: Vec<&str> = self
            .items
            .iter()
            .filter(|i| i.mark == Mark::NotApplicable)
            .map(|i| i.label.as_str())
            .collect();
        if failed.is_empty() {
            let also = if skipped.is_empty() {
                String::new()
            } else {
                format!(" (not applicable here: {})", skipped.join(", "))
            };
            println!("READY: {given} passed every check{also}");
            0
        } else {
            println!(
                "NOT READY: {} of {} checks failed ({}); fix the lines marked FAIL",
                failed.len(),
                self.items.len(),
                failed.join(", ")
            );
            1
        }
    }
}

/// The cluster's Spark, as `--spark` gave it.
#[derive(Clone, Copy, Debug)]
struct Target {
    major: u32,
    minor: u32,
    patch: Option<u32>,
}

impl Target {
    fn parse(text: &str) -> Result<Target, BadInput> {
        let bad = || {
            BadInput::msg(format!(
                "--spark {text:?}: give the cluster's Spark version, e.g. 4.0.5 or 4.0"
            ))
        };
        let parts: Vec<&str> = text.trim().split('.').collect();
        let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
        match parts.as_slice() {
            [major, minor] => Ok(Target {
                major: num(major)?,
                minor: num(minor)?,
                patch: None,
            }),
            [major, minor, patch] => Ok(Target {
                major: num(major)?,
                minor: num(minor)?,
                patch: Some(num(patch)?),
            }),
            _ => Err(bad()),
        }
    }

    fn line(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    /// The pip requirement for this Spark's pyspark.
    fn requirement(&self) -> String {
        match self.patch {
            Some(p) => format!("pyspark=={}.{}.{p}", self.major, self.minor),
            None => format!("pyspark=={}.{}.*", self.major, self.minor),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if let Some(p) = self.patch {
            write!(f, ".{p}")?;
        }
        Ok(())
    }
}

pub async fn doctor_cmd(args: DoctorArgs) -> anyhow::Result<u8> {
    let target = args.spark.as_deref().map(Target::parse).transpose()?;
    let given = args.python.display().to_string();
    let mut list = Checklist::default();
    let shipped = match shipped::open(&args.python) {
        Ok(s) => s,
        // It exists and is a PEX, it just is not an interpreter: the env is not ready.
        Err(ShippedError::PexEntryPoint { entry_point, .. }) => {
            println!("fakejvm doctor: {given} (a PEX file)");
            list.add(
                Item::new(
                    Mark::Fail,
                    "interpreter",
                    format!("runs its entry point `{entry_point}` instead of Python: PYSPARK_PYTHON={given} cannot start a worker (`-m pyspark.daemon` goes to `{entry_point}`)"),
                )
                .fix(format!("rebuild it without -m/-e/-c/--script (`pex REQUIREMENTS -o {given}`), or set PEX_INTERPRETER=1 in the executors' environment (spark.executorEnv.PEX_INTERPRETER=1)")),
            );
            return Ok(list.finish(&given));
        }
        Err(ShippedError::PexNotInterpreter { said, .. }) => {
            println!("fakejvm doctor: {given} (a PEX file)");
            list.add(
                Item::new(
                    Mark::Fail,
                    "interpreter",
                    format!("does not act as Python: `{given} -c ...` answered {said:?}"),
                )
                .fix(format!(
                    "rebuild it without an entry point: pex REQUIREMENTS -o {given}"
                )),
            );
            return Ok(list.finish(&given));
        }
        Err(e) => return Err(env_failure(None, EnvError::from(e))),
    };
    println!("fakejvm doctor: {}", shipped.describe());
    let contents = shipped.inspect().map_err(|e| env_failure(None, e))?;
    let pex_requirements: Vec<String> = contents
        .pex
        .as_ref()
        .map(|p| p.requirements.clone())
        .unwrap_or_default();
    let fix_with = |reqs: &[String]| shipped.install_fix(reqs, &pex_requirements);

    let pyspark: Option<Result<PysparkVersion, String>> = contents
        .pyspark
        .as_deref()
        .map(|v| v.parse().map_err(|_| v.to_string()));
    list.add(python_item(&contents));
    list.add(pyspark_item(&contents, target, &fix_with));
    let Some(Ok(version)) = pyspark else {
        for p in Probe::ALL {
            list.add(Item::new(
                Mark::NotApplicable,
                p.label(),
                "needs a pyspark fakejvm can read (see above)",
            ));
        }
        return Ok(list.finish(&given));
    };

    let missing: Vec<&Package> = contents
        .packages
        .iter()
        .filter(|p| p.problem.is_some())
        .collect();
    let requirements: Vec<String> = missing.iter().map(|p| p.requirement()).collect();
    for p in &contents.packages {
        list.add(package_item(p, version, &fix_with(&requirements)));
    }

    let env = PythonEnv {
        python: shipped.python.clone(),
        pyspark: version,
        python_version: contents.python.clone(),
        pyspark_dir: contents.pyspark_dir.clone().unwrap_or_default(),
        flavor: None,
    };
    run_probes(&mut list, &env, &shipped, &missing, &pex_requirements).await;
    Ok(list.finish(&given))
}

fn python_item(c: &Contents) -> Item {
    let label = "python";
    let Some(pyspark) = &c.pyspark else {
        return Item::new(Mark::Ok, label, &c.python_full);
    };
    let listed = listed_range(&c.python_classifiers);
    let supported = c
        .requires_python
        .as_deref()
        .map(|r| (r, VersionReq::try_from(r.to_string())));
    let mut item = match supported {
        Some((r, Ok(req))) if req.matches_parts(python_parts(&c.python_full)) => Item::new(
            Mark::Ok,
            label,
            format!("{}: pyspark {pyspark} supports Python {r}", c.python_full),
        ),
        Some((r, Ok(_))) => Item::new(
            Mark::Fail,
            label,
            format!("{}: pyspark {pyspark} needs Python {r}", c.python_full),
        )
        .fix(format!(
            "ship an interpreter that pyspark {pyspark} supports ({r}{}), or a pyspark made for Python {}",
            listed.as_deref().map(|l| format!("; it lists {l}")).unwrap_or_default(),
            c.python
        )),
        Some((r, Err(_))) => Item::new(
            Mark::Ok,
            label,
            format!(
                "{} (pyspark {pyspark} says Requires-Python {r:?}, which fakejvm does not read)",
                c.python_full
            ),
        ),
        None => Item::new(
            Mark::Ok,
            label,
            format!("{} (pyspark {pyspark} states no Requires-Python)", c.python_full),
        ),
    };
    if let Some(l) = &listed {
        if c.python_classifiers
            .iter()
            .any(|v| python_parts(v) == python_parts(&c.python))
        {
            item.detail.push_str(&format!(" (it lists {l})"));
        } else if item.mark == Mark::Ok {
            item = item.note(format!(
                "pyspark {pyspark} lists Python {l} in its classifiers, not {}: Spark does not test it there",
                c.python
            ));
        }
    }
    item
}

/// "3.9 to 3.13" from pyspark's classifiers.
fn listed_range(classifiers: &[String]) -> Option<String> {
    let mut v: Vec<&String> = classifiers.iter().collect();
    v.sort_by_key(|s| python_parts(s));
    match (v.first(), v.last()) {
        (Some(a), Some(b)) if a == b => Some(a.to_string()),
        (Some(a), Some(b)) => Some(format!("{a} to {b}")),
        _ => None,
    }
}

fn pyspark_item(
    c: &Contents,
    target: Option<Target>,
    fix_with: &dyn Fn(&[String]) -> String,
) -> Item {
    let label = "pyspark";
    let wanted = target.map_or_else(|| "pyspark==X.Y.Z".to_string(), |t| t.requirement());
    let Some(text) = &c.pyspark else {
        let which = target.map_or_else(
            || "the cluster's Spark version".to_string(),
            |t| format!("Spark {t}"),
        );
        return Item::new(Mark::Fail, label, "not installed")
            .fix(format!("{} (pyspark of {which})", fix_with(&[wanted])));
    };
    let Ok(v) = text.parse::<PysparkVersion>() else {
        return Item::new(
            Mark::Fail,
            label,
            format!("reports version {text:?}, which is no pyspark release fakejvm can read"),
        )
        .fix(fix_with(&[wanted]));
    };
    let speaks = Dialect::for_version(v.major, v.minor);
    let mut item = match target {
        None => Item::new(
            Mark::Ok,
            label,
            format!("{v} (give --spark with the cluster's Spark version to check that they match)"),
        ),
        Some(t) if (t.major, t.minor) == (v.major, v.minor) => {
            let detail = match t.patch {
                Some(p) if p == v.patch => format!("{v} matches Spark {t}"),
                Some(_) => format!("{v}, of Spark {t}'s line ({})", t.line()),
                None => format!("{v}, of the Spark {} line", t.line()),
            };
            let item = Item::new(Mark::Ok, label, detail);
            match t.patch {
                Some(p) if p != v.patch => item.note(format!(
                    "the patch releases differ ({v} here, {t} on the cluster): the worker protocol is the same within {}, but fixes between them are not in this env; `{}` matches exactly",
                    t.line(),
                    t.requirement()
                )),
                _ => item,
            }
        }
        Some(t) => {
            let why = match (speaks, Dialect::for_version(t.major, t.minor)) {
                (Some(a), Some(b)) if a != b => format!(
                    ": Spark {} sends request family {b:?}, pyspark {}'s worker reads family {a:?}",
                    t.line(),
                    v.minor_line()
                ),
                _ => ": Spark runs only the pyspark of its own release line".to_string(),
            };
            Item::new(
                Mark::Fail,
                label,
                format!("{v} does not match Spark {t}{why}"),
            )
            .fix(fix_with(&[t.requirement()]))
        }
    };
    if speaks.is_none() {
        item =
            item.note("fakejvm speaks pyspark 3.3 and later: it cannot run tasks through this one");
    }
    item
}

fn package_item(p: &Package, pyspark: PysparkVersion, fix: &str) -> Item {
    let asks = match (&p.wanted, &p.runtime_minimum) {
        (Some(_), _) | (None, Some(_)) => format!("pyspark {pyspark} asks {}", p.requirement()),
        (None, None) => format!("pyspark {pyspark} names no version"),
    };
    let purpose = match p.name.as_str() {
        "py4j" => "pyspark's one hard dependency: every worker imports it",
        "numpy" => "for pandas and Arrow UDFs (pandas needs it; RDD-only jobs do not)",
        _ => "for pandas and Arrow UDFs (RDD-only jobs do not need it)",
    };
    let mut item = match &p.problem {
        None => {
            let own = if p
                .checked_by
                .as_deref()
                .is_some_and(|c| c.starts_with("pyspark."))
            {
                "; pyspark's own check passes"
            } else {
                ""
            };
            Item::new(
                Mark::Ok,
                &p.name,
                format!(
                    "{} ({asks}{own})",
                    p.installed.as_deref().unwrap_or("(version unknown)")
                ),
            )
        }
        Some(problem) => {
            Item::new(Mark::Fail, &p.name, format!("{problem}; {asks}, {purpose}")).fix(fix)
        }
    };
    for w in &p.warnings {
        item = item.note(format!("pyspark warns: {w}"));
    }
    if let (Some(w), Some(min)) = (&p.wanted, &p.runtime_minimum) {
        if !w.contains(min.as_str()) {
            item = item.note(format!(
                "pyspark's metadata asks {}{w}, its runtime check {}>={min}",
                p.name, p.name
            ));
        }
    }
    item
}

/// Decide which tasks can run, run those through the env, and add a line for each.
async fn run_probes(
    list: &mut Checklist,
    env: &PythonEnv,
    shipped: &Shipped,
    missing: &[&Package],
    pex_requirements: &[String],
) {
    let lacks = |names: &[&str]| -> Vec<String> {
        missing
            .iter()
            .filter(|p| names.contains(&p.name.as_str()))
            .map(|p| p.name.clone())
            .collect()
    };
    let v = env.pyspark;
    let why_not = |probe: Probe| -> Option<String> {
        if Dialect::for_version(v.major, v.minor).is_none() {
            return Some(format!("fakejvm speaks pyspark 3.3 and later, this is {v}"));
        }
        if probe != Probe::Rdd && UdfLayout::for_version(v.major, v.minor).is_none() {
            return Some(format!(
                "fakejvm builds UDF requests for pyspark 3.5 and later, this is {v}"
            ));
        }
        if probe == Probe::ArrowUdf && (v.major, v.minor) < (4, 1) {
            return Some(format!(
                "Arrow UDFs (@arrow_udf) exist from pyspark 4.1, this is {v}"
            ));
        }
        let needs: &[&str] = match probe {
            Probe::Rdd | Probe::SqlUdf => &["py4j"],
            Probe::PandasUdf => &["py4j", "pandas", "pyarrow", "numpy"],
            Probe::ArrowUdf => &["py4j", "pyarrow"],
        };
        let lacking = lacks(needs);
        (!lacking.is_empty()).then(|| {
            format!(
                "needs {}, which this env lacks (see above)",
                and_list(&lacking)
            )
        })
    };
    let runnable: Vec<Probe> = Probe::ALL
        .into_iter()
        .filter(|p| why_not(*p).is_none())
        .collect();
    let report = if runnable.is_empty() {
        None
    } else {
        Some(tasks::run(env, &tasks::scenario(&runnable)).await)
    };
    for probe in Probe::ALL {
        let item = match (why_not(probe), &report) {
            (Some(why), _) => Item::new(Mark::NotApplicable, probe.label(), why),
            (None, None) => unreachable!("a runnable probe means a report"),
            (None, Some(Err(why))) => Item::new(
                Mark::Fail,
                probe.label(),
                format!("{}: {why}", probe.what()),
            ),
            (None, Some(Ok(r))) => {
                let index = runnable.iter().position(|p| *p == probe).expect("runnable");
                probe_item(probe, r, index, shipped, pex_requirements)
            }
        };
        list.add(item);
    }
    if let Some(Ok(r)) = &report {
        if !r.leftovers.is_empty() {
            let procs: Vec<String> = r
                .leftovers
                .iter()
                .map(|(p, c)| format!("{p} {c}"))
                .collect();
            list.add(Item::new(
                Mark::Fail,
                "cleanup",
                format!(
                    "processes of the env outlived the daemon's shutdown (killed): {}",
                    procs.join("; ")
                ),
            ));
        }
    }
}

fn probe_item(
    probe: Probe,
    r: &crate::scenario::ScenarioReport,
    index: usize,
    shipped: &Shipped,
    pex_requirements: &[String],
) -> Item {
    if let Status::NotApplicable { why } = &r.status {
        return Item::new(Mark::NotApplicable, probe.label(), why.clone());
    }
    let Some(t) = r.tasks.get(index) else {
        return Item::new(
            Mark::Fail,
            probe.label(),
            format!("{}: not run, an earlier task stopped the run", probe.what()),
        );
    };
    if t.ok {
        return Item::new(
            Mark::Ok,
            probe.label(),
            format!("{}: passed ({} ms)", probe.what(), t.elapsed_ms),
        );
    }
    let mut outcome = crate::error::one_line(&t.outcome.to_string());
    if outcome.chars().count() > 300 {
        outcome = format!("{}...", outcome.chars().take(300).collect::<String>());
    }
    let item = Item::new(
        Mark::Fail,
        probe.label(),
        format!("{}: {outcome}", probe.what()),
    );
    match missing_module(&t.outcome) {
        Some(module) => item.fix(shipped.install_fix(&[module], pex_requirements)),
        None => {
            let tail: Vec<&str> = r.stderr_tail.lines().rev().take(5).collect();
            let mut item = item.fix("see the worker's stderr below; the env's interpreter fails this task as the cluster's would");
            for l in tail.into_iter().rev() {
                item = item.note(format!("stderr: {l}"));
            }
            item
        }
    }
}

/// "a", "a and b", "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// `No module named 'pyarrow'` (or 'pyarrow.compute') in a task's traceback: the package to install.
fn missing_module(outcome: &Outcome) -> Option<String> {
    let Outcome::PythonException { exc_type, message } = outcome else {
        return None;
    };
    if !exc_type.ends_with("ModuleNotFoundError") && !exc_type.ends_with("ImportError") {
        return None;
    }
    let rest = &message[message.find("No module named '")? + "No module named '".len()..];
    let module = &rest[..rest.find('\'')?];
    Some(module.split('.').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spark_versions_are_a_release_or_a_line() {
        let t = Target::parse("4.0.5").unwrap();
        assert_eq!(
            (t.to_string(), t.requirement()),
            ("4.0.5".into(), "pyspark==4.0.5".into())
        );
        let l = Target::parse("4.1").unwrap();
        assert_eq!(l.requirement(), "pyspark==4.1.*");
        for bad in ["", "4", "four.0", "4.0.5.1", "4.x"] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--spark") && e.contains("4.0.5"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_missing_module_is_named_for_the_fix() {
        let exc = |t: &str, m: &str| Outcome::PythonException {
            exc_type: t.into(),
            message: m.into(),
        };
        assert_eq!(
            missing_module(&exc(
                "ModuleNotFoundError",
                "No module named 'pyarrow.compute'"
            )),
            Some("pyarrow".into())
        );
        assert_eq!(
            missing_module(&exc("TypeError", "No module named 'x'")),
            None
        );
        assert_eq!(missing_module(&Outcome::Passed), None);
    }

    #[test]
    fn lines_are_ascii_with_the_fix_under_them() {
        let item =
            Item::new(Mark::Fail, "pyarrow", "not installed").fix("pip install 'pyarrow>=11.0.0'");
        let text = item.text();
        assert!(text.is_ascii(), "{text}");
        assert_eq!(
            text,
            "  FAIL  pyarrow     not installed\n                    fix: pip install 'pyarrow>=11.0.0'"
        );
    }

    #[test]
    fn classifiers_read_as_a_range() {
        let c: Vec<String> = ["3.10", "3.9", "3.13"].map(String::from).to_vec();
        assert_eq!(listed_range(&c).as_deref(), Some("3.9 to 3.13"));
        assert_eq!(listed_range(&[]), None);
    }
}
