//! JUnit XML for CI (`--junit PATH` on run, check, replay and `report merge`): GitHub Actions,
//! GitLab and Jenkins show each testcase natively.
//!
//! One testcase per scenario task (classname the scenario file, name the task index and the
//! scenario's description) and one per golden (classname the golden folder). A task that failed
//! is a `<failure>` carrying the scenario's verdict text, with the worker's stderr tail in
//! `<system-err>`; a task that fakejvm could not judge (an `Outcome::Harness`) is an `<error>`;
//! an N/A scenario or golden is `<skipped>` with its reason. Suites are per pyspark version, with
//! the version (and Python, and shard) in their name and properties.
//!
//! The cases are built from the same typed reports the text and JSON reports come from, and are
//! kept in the JSON report, so `report merge` writes the same JUnit as an unsharded run.
//! quick-xml escapes; what XML 1.0 cannot hold at all (control characters other than tab, line
//! feed and carriage return, U+FFFE/U+FFFF) is written as a visible `\u{..}` escape first.

use crate::golden::replay::GoldenStatus;
use crate::golden::GoldenReport;
use crate::report;
use crate::scenario::{Scenario, ScenarioReport, Status, TaskReport};
use crate::verdict::{Outcome, OutcomeKind};
use quick_xml::events::{BytesCData, BytesDecl, Event};
use quick_xml::Writer;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;

/// A `<testsuite>`: the cases of one pyspark version (and Python) of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Suite {
    pub name: String,
    /// `<properties>`: pyspark, python, shard...
    pub properties: Vec<(String, String)>,
    pub cases: Vec<Case>,
}

/// A `<testcase>`, as kept in the JSON report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub classname: String,
    pub name: String,
    pub time_ms: u64,
    #[serde(flatten)]
    pub result: CaseResult,
    /// `<system-out>`: a blessed golden's staged change.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_out: String,
    /// `<system-err>`: the end of what the daemon and its workers wrote to stderr.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_err: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CaseResult {
    Passed,
    /// A finding about the worker: `kind` is the outcome's name (the JUnit `type`), `message`
    /// one line, `text` the verdict text a person reads.
    Failure {
        kind: String,
        message: String,
        text: String,
    },
    /// fakejvm could not judge the task (it failed itself): not a finding about the worker.
    Error {
        kind: String,
        message: String,
        text: String,
    },
    /// Not applicable to this version, with the reason.
    Skipped {
        message: String,
    },
}

impl Case {
    fn new(classname: &str, name: String, time_ms: u64) -> Case {
        Case {
            classname: classname.to_string(),
            name,
            time_ms,
            result: CaseResult::Passed,
            system_out: String::new(),
            system_err: String::new(),
        }
    }

    /// Mark the case failed (or add to its failure): the first problem names it.
    fn fail(&mut self, kind: &str, message: String, text: &str) {
        match &mut self.result {
            CaseResult::Failure { message: m, .. } | CaseResult::Error { message: m, .. } => {
                // Already failed: the verdict text holds every problem; the message lists them.
                m.push_str("; ");
                m.push_str(&message);
            }
            _ => {
                self.result = CaseResult::Failure {
                    kind: kind.to_string(),
                    message,
                    text: text.to_string(),
                }
            }
        }
    }
}

/// The longest part of a scenario's description that names its testcases.
const NAME_CHARS: usize = 100;

/// One case per task of the scenario (every task, also those an N/A scenario never ran). A
/// scenario that failed has at least one failed case: its own problems (a fault that did not
/// do what it declared, leaked processes, `expect_stderr`) go to the task they belong to, else
/// to the last task.
pub fn scenario_cases(sc: &Scenario, r: &ScenarioReport) -> Vec<Case> {
    let text = report::scenario_lines(r);
    let about = short(sc.description.as_deref().unwrap_or(&r.name));
    let count = sc.tasks.len().max(r.tasks.len());
    let mut cases: Vec<Case> = (0..count)
        .map(|i| {
            let t = r.tasks.get(i);
            Case::new(
                &r.file,
                format!("task {i}: {about}"),
                t.map_or(0, |t| t.elapsed_ms),
            )
        })
        .collect();
    if cases.is_empty() {
        cases.push(Case::new(
            &r.file,
            format!("scenario: {about}"),
            r.elapsed_ms,
        ));
    }
    let stderr = |c: &mut Case| c.system_err = clean(&r.stderr_tail).into_owned();
    if let Status::NotApplicable { why } = &r.status {
        for c in &mut cases {
            c.result = CaseResult::Skipped {
                message: why.clone(),
            };
        }
        return cases;
    }
    let mut first_missing = None;
    for (i, case) in cases.iter_mut().enumerate() {
        match r.tasks.get(i) {
            Some(t) => task_result(case, t, &text),
            None if r.tasks.is_empty() && count == 0 => {}
            None => {
                // Only after fakejvm failed at an earlier task (run.rs stops the scenario there).
                let at = *first_missing.get_or_insert(i);
                case.result = CaseResult::Error {
                    kind: "Harness".into(),
                    message: format!("not run: fakejvm stopped the scenario before task {at}"),
                    text: text.clone(),
                };
            }
        }
    }
    let last = cases.len() - 1;
    for f in r.faults.iter().filter(|f| !f.ok) {
        let at = f.task.filter(|&t| t <= last).unwrap_or(last);
        let why = f
            .problem
            .as_deref()
            .unwrap_or("its expectations did not hold");
        cases[at].fail(
            "Fault",
            format!("fault {} ({}): {why}", f.index, f.fault),
            &text,
        );
    }
    if !r.leftovers.is_empty() {
        let line = report::leftovers_line(&r.leftovers);
        cases[last].fail("LeakedProcess", line.trim().to_string(), &text);
    }
    for u in &r.stderr_unmet {
        cases[last].fail("ExpectStderr", format!("expect_stderr: {u}"), &text);
    }
    if r.status == Status::Failed && cases.iter().all(|c| c.result == CaseResult::Passed) {
        cases[last].fail("Failed", "the scenario failed".into(), &text);
    }
    for c in &mut cases {
        if !matches!(c.result, CaseResult::Passed) {
            stderr(c);
        }
    }
    cases
}

fn task_result(case: &mut Case, t: &TaskReport, text: &str) {
    if t.ok {
        return;
    }
    let mut problems: Vec<String> = report::task_outcome_problem(t).into_iter().collect();
    problems.extend(t.stderr_unmet.iter().map(|u| format!("expect_stderr: {u}")));
    let message = format!("task {}: {}", t.index, problems.join("; "));
    case.result = match &t.outcome {
        Outcome::Harness { .. } => CaseResult::Error {
            kind: "Harness".into(),
            message,
            text: text.to_string(),
        },
        o if t.stderr_unmet.is_empty() || o.kind() != OutcomeKind::Passed => CaseResult::Failure {
            kind: format!("{:?}", o.kind()),
            message,
            text: text.to_string(),
        },
        _ => CaseResult::Failure {
            kind: "ExpectStderr".into(),
            message,
            text: text.to_string(),
        },
    };
}

/// One case per golden: classname its folder, name what it replays.
pub fn golden_case(r: &GoldenReport) -> Case {
    let text = r.text();
    let mut case = Case::new(
        &r.dir.display().to_string(),
        format!("replay of {} task(s)", r.tasks),
        r.elapsed_ms,
    );
    match &r.status {
        GoldenStatus::Passed => {}
        GoldenStatus::Blessed => case.system_out = clean(&text).into_owned(),
        GoldenStatus::NotApplicable { why } => {
            case.result = CaseResult::Skipped {
                message: why.clone(),
            }
        }
        GoldenStatus::Failed => {
            let finding = r
                .outcomes
                .iter()
                .find(|o| !matches!(o, Outcome::Passed | Outcome::Harness { .. }));
            let harness = r
                .outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Harness { .. }));
            let message = r
                .differences
                .first()
                .map(|d| {
                    format!(
                        "{} reply {} {}: expected {}, got {}",
                        d.conn, d.reply, d.at, d.expected, d.got
                    )
                })
                .or_else(|| r.errors.first().cloned())
                .or_else(|| {
                    (!r.leftovers.is_empty())
                        .then(|| report::leftovers_line(&r.leftovers).trim().to_string())
                })
                .or_else(|| {
                    (!r.pending.is_empty()).then(|| {
                        format!("pending from an earlier --bless: {}", r.pending.join(", "))
                    })
                })
                .unwrap_or_else(|| "the golden failed".into());
            let message = crate::error::one_line(&message);
            let text = text.clone();
            case.result = match finding {
                Some(o) => CaseResult::Failure {
                    kind: format!("{:?}", o.kind()),
                    message,
                    text,
                },
                None if harness || !r.errors.is_empty() => CaseResult::Error {
                    kind: "Harness".into(),
                    message,
                    text,
                },
                None if !r.leftovers.is_empty() => CaseResult::Failure {
                    kind: "LeakedProcess".into(),
                    message,
                    text,
                },
                None => CaseResult::Failure {
                    kind: "PendingBless".into(),
                    message,
                    text,
                },
            };
            case.system_err = clean(&r.stderr_tail).into_owned();
        }
    }
    case
}

/// The description's first line, cut at [`NAME_CHARS`].
fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default().trim();
    if line.chars().count() <= NAME_CHARS {
        return line.to_string();
    }
    let cut: String = line.chars().take(NAME_CHARS).collect();
    format!("{}...", cut.trim_end())
}

/// Text that XML 1.0 can hold: characters it cannot (NUL and the other C0 controls but tab, LF
/// and CR; U+FFFE, U+FFFF) become a visible `\u{..}`, so the reader still sees they were there.
pub fn clean(s: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
    };
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if bad(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    time_ms: u64,
}

impl Counts {
    fn of<'a>(cases: impl IntoIterator<Item = &'a Case>) -> Counts {
        let mut n = Counts::default();
        for c in cases {
            n.tests += 1;
            n.time_ms += c.time_ms;
            match c.result {
                CaseResult::Passed => {}
                CaseResult::Failure { .. } => n.failures += 1,
                CaseResult::Error { .. } => n.errors += 1,
                CaseResult::Skipped { .. } => n.skipped += 1,
            }
        }
        n
    }

    fn attributes(&self) -> [(&'static str, String); 5] {
        [
            ("tests", self.tests.to_string()),
            ("failures", self.failures.to_string()),
            ("errors", self.errors.to_string()),
            ("skipped", self.skipped.to_string()),
            ("time", seconds(self.time_ms)),
        ]
    }
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The whole file: `<testsuites>` around one `<testsuite>` per suite.
pub fn to_xml(suites: &[Suite]) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_doc(&mut w, suites).expect("writing XML to memory does not fail");
    let mut xml =
        String::from_utf8(w.into_inner()).expect("quick-xml writes the UTF-8 it is given");
    xml.push('\n');
    xml
}

fn write_doc(w: &mut Writer<Vec<u8>>, suites: &[Suite]) -> std::io::Result<()> {
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let all = Counts::of(suites.iter().flat_map(|s| &s.cases));
    let attrs = all.attributes();
    w.create_element("testsuites")
        .with_attribute(("name", "fakejvm"))
        .with_attributes(attrs.iter().map(|(k, v)| (*k, v.as_str())))
        .write_inner_content(|w| {
            for s in suites {
                write_suite(w, s)?;
            }
            Ok(())
        })?;
    Ok(())
}

fn write_suite(w: &mut Writer<Vec<u8>>, s: &Suite) -> std::io::Result<()> {
    let counts = Counts::of(&s.cases);
    let attrs = counts.attributes();
    let name = clean(&s.name);
    w.create_element("testsuite")
        .with_attribute(("name", name.as_ref()))
        .with_attributes(attrs.iter().map(|(k, v)| (*k, v.as_str())))
        .write_inner_content(|w| {
            if !s.properties.is_empty() {
                w.create_element("properties").write_inner_content(|w| {
                    for (k, v) in &s.properties {
                        w.create_element("property")
                            .with_attribute(("name", clean(k).as_ref()))
                            .with_attribute(("value", clean(v).as_ref()))
                            .write_empty()?;
                    }
                    Ok(())
                })?;
            }
            for c in &s.cases {
                write_case(w, c)?;
            }
            Ok(())
        })?;
    Ok(())
}

fn write_case(w: &mut Writer<Vec<u8>>, c: &Case) -> std::io::Result<()> {
    let time = seconds(c.time_ms);
    let el = w
        .create_element("testcase")
        .with_attribute(("classname", clean(&c.classname).as_ref()))
        .with_attribute(("name", clean(&c.name).as_ref()))
        .with_attribute(("time", time.as_str()));
    if c.result == CaseResult::Passed && c.system_out.is_empty() && c.system_err.is_empty() {
        el.write_empty()?;
        return Ok(());
    }
    el.write_inner_content(|w| {
        match &c.result {
            CaseResult::Passed => {}
            CaseResult::Failure {
                kind,
                message,
                text,
            }
            | CaseResult::Error {
                kind,
                message,
                text,
            } => {
                let tag = if matches!(c.result, CaseResult::Failure { .. }) {
                    "failure"
                } else {
                    "error"
                };
                w.create_element(tag)
                    .with_attribute(("message", clean(message).as_ref()))
                    .with_attribute(("type", clean(kind).as_ref()))
                    .write_inner_content(|w| cdata(w, text))?;
            }
            CaseResult::Skipped { message } => {
                w.create_element("skipped")
                    .with_attribute(("message", clean(message).as_ref()))
                    .write_empty()?;
            }
        }
        if !c.system_out.is_empty() {
            w.create_element("system-out")
                .write_inner_content(|w| cdata(w, &c.system_out))?;
        }
        if !c.system_err.is_empty() {
            w.create_element("system-err")
                .write_inner_content(|w| cdata(w, &c.system_err))?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Text as CDATA, which keeps a traceback readable in the file; a `]]>` inside is split across
/// two sections (quick-xml's `BytesCData::escaped`), since CDATA has no escape.
fn cdata(w: &mut Writer<Vec<u8>>, text: &str) -> std::io::Result<()> {
    let text = clean(text);
    for part in BytesCData::escaped(&text) {
        w.write_event(Event::CData(part))?;
    }
    Ok(())
}

/// Written atomically ([`report::write_atomic`]): a CI step never uploads half a file.
pub fn write(path: &Path, suites: &[Suite]) -> std::io::Result<()> {
    report::write_atomic(path, to_xml(suites).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(result: CaseResult) -> Case {
        Case {
            classname: "scenarios/a<b>.json".into(),
            name: "task 0: \"quoted\" & more\nsecond line".into(),
            time_ms: 1234,
            result,
            system_out: String::new(),
            system_err: "stderr ]]> with\u{1b}[31m colour\u{0} and a NUL".into(),
        }
    }

    /// A golden fakejvm could not replay is an error; one whose worker misbehaved is a failure
    /// named for the outcome; N/A is skipped with the reason.
    #[test]
    fn golden_cases_sort_failures_from_errors() {
        let golden = |status, outcomes, errors: Vec<&str>| GoldenReport {
            dir: "golden/pyspark-4.0.5/map_parallelize".into(),
            pyspark: "4.0.5".into(),
            dialect: crate::protocol::Dialect::A,
            mode: crate::worker::Mode::Daemon,
            tasks: 2,
            status,
            differences: vec![],
            errors: errors.into_iter().map(String::from).collect(),
            leftovers: vec![],
            pending: vec![],
            outcomes,
            stderr_tail: "Traceback: ]]>".into(),
            elapsed_ms: 5,
        };
        let no_env = golden_case(&golden(
            GoldenStatus::Failed,
            vec![],
            vec!["no Python env with pyspark 4.0.5:\nmissing"],
        ));
        assert_eq!(no_env.name, "replay of 2 task(s)");
        assert!(
            matches!(&no_env.result, CaseResult::Error { kind, message, .. }
                if kind == "Harness" && message == "no Python env with pyspark 4.0.5: | missing"),
            "{no_env:?}"
        );
        let died = Outcome::DaemonDied {
            exit: None,
            stderr_tail: String::new(),
        };
        let died = golden_case(&golden(
            GoldenStatus::Failed,
            vec![died.clone(), died],
            vec!["DaemonDied"],
        ));
        assert!(
            matches!(&died.result, CaseResult::Failure { kind, .. } if kind == "DaemonDied"),
            "{died:?}"
        );
        assert_eq!(died.system_err, "Traceback: ]]>");
        let na = golden_case(&golden(
            GoldenStatus::NotApplicable {
                why: "other".into(),
            },
            vec![],
            vec![],
        ));
        assert_eq!(
            na.result,
            CaseResult::Skipped {
                message: "other".into()
            }
        );
        let xml = to_xml(&[Suite {
            name: "g".into(),
            properties: vec![],
            cases: vec![no_env, died, na],
        }]);
        assert!(
            xml.contains(r#"tests="3" failures="1" errors="1" skipped="1""#),
            "{xml}"
        );
    }

    #[test]
    fn what_xml_cannot_hold_is_made_visible_and_the_rest_is_escaped() {
        assert_eq!(clean("plain\ttext\n"), Cow::Borrowed("plain\ttext\n"));
        assert_eq!(clean("a\u{0}b\u{1b}c\u{FFFF}"), "a\\u{0}b\\u{1b}c\\u{ffff}");
        let suite = Suite {
            name: "fakejvm scenarios: pyspark 4.0.5".into(),
            properties: vec![("pyspark".into(), "4.0.5".into())],
            cases: vec![
                case(CaseResult::Passed),
                case(CaseResult::Failure {
                    kind: "Mismatch".into(),
                    message: "expected [1], got [\"]]>\u{7}\"]".into(),
                    text: "PASS? no: ]]> and ]]]]>> inside <tags> & \u{2}".into(),
                }),
                case(CaseResult::Skipped {
                    message: "needs >=4.1, this is 4.0.5".into(),
                }),
                case(CaseResult::Error {
                    kind: "Harness".into(),
                    message: "harness error".into(),
                    text: String::new(),
                }),
            ],
        };
        let xml = to_xml(&[suite]);
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        assert!(
            xml.contains(
                r#"<testsuites name="fakejvm" tests="4" failures="1" errors="1" skipped="1" time="4.936">"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"classname="scenarios/a&lt;b&gt;.json" name="task 0: &quot;quoted&quot; &amp; more&#10;second line" time="1.234""#),
            "{xml}"
        );
        assert!(
            !xml.chars()
                .any(|c| c < ' ' && !matches!(c, '\n' | '\t' | '\r')),
            "no raw control character is left"
        );
        // No CDATA section is ended early by the text's own "]]>".
        for section in xml.split("<![CDATA[").skip(1) {
            let (inside, _) = section.split_once("]]>").expect("each section closes");
            assert!(!inside.contains("]]>"));
        }
        assert!(xml.contains("<skipped message=\"needs &gt;=4.1, this is 4.0.5\"/>"));
    }
}
