//! Coverage feedback (`fakejvm fuzz --coverage`): which lines of pyspark's own Python files each
//! case ran, the campaign's map of them, AFL's rule (a case that reaches a line no earlier case
//! reached joins the corpus, as `corpus/cov-N.json`), the timeline, and the HTML report.
//!
//! The lines come from fakejvm's persist loop (`harness/python/fakejvm_persist.py`), which
//! traces only what runs under the pyspark package: with sys.monitoring on CPython 3.12+, with
//! coverage.py's C tracer on older ones (installed once into fakejvm's tools cache, see
//! `pyenv::coverage_tracer`). They reach fakejvm beside the protocol, never on a worker's socket:
//! a persistent server adds them to its per-case `done` line on its control channel, a warm-fork
//! child leaves them in a file named by its pid (see `exec`). Only those two executors run
//! fakejvm's loop; pyspark's own daemon and worker (fork server, reuse, spawn) are not traced.
//!
//! The map lives in `--out/coverage.json`, so a resumed campaign goes on from it. Lines run by
//! pyspark's imports when a server starts, and by the seeds' calibration runs, are in the map
//! before the first case, so no case gets credit for them.

use super::exec::ExecMode;
use crate::atomic::{write_atomic, WriteOptions};
use crate::error::{BadInput, HarnessError};
use crate::pyenv::{self, PythonEnv};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one case (or one server's start-up) ran: lines by file, relative to the pyspark package
/// ("worker.py", "sql/pandas/serializers.py").
pub type CaseLines = BTreeMap<String, Vec<u32>>;

pub const COVERAGE_FILE: &str = "coverage.json";
const COVERAGE_KIND: &str = "fakejvm-fuzz-coverage";
const COVERAGE_FORMAT: u32 = 1;
/// Always in the summary and the report, reached or not: the files the protocol lives in.
pub const KEY_FILES: [&str; 3] = ["worker.py", "serializers.py", "sql/pandas/serializers.py"];
/// A timeline point this often (and at the start and the end).
pub const POINT_EVERY: Duration = Duration::from_secs(5);

/// How the persist loop traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracer {
    /// CPython 3.12+: sys.monitoring LINE events, each location disabled after its first hit
    /// and re-armed per case.
    Monitoring,
    /// CPython 3.9-3.11: coverage.py's C tracer, loaded from this tools directory.
    CTracer { tools: PathBuf },
}

impl Tracer {
    /// The tracer for `env`'s CPython, installing coverage.py's first where it needs one.
    pub fn for_env(env: &PythonEnv) -> anyhow::Result<Tracer> {
        let minor: pyenv::PythonMinor = env
            .python_version
            .parse()
            .map_err(|e: String| HarnessError::new(format!("coverage: {e}")))?;
        if (minor.major, minor.minor) >= (3, 12) {
            return Ok(Tracer::Monitoring);
        }
        if (minor.major, minor.minor) < (3, 9) {
            return Err(BadInput::msg(format!(
                "--coverage: Python {minor} has neither sys.monitoring (3.12+) nor a coverage.py {} C tracer (3.9+): use an env with --python-version 3.9 or newer",
                pyenv::COVERAGE_VERSION
            ))
            .into());
        }
        let tools = pyenv::coverage_tracer(&env.python_version)
            .map_err(|e| crate::error::env_failure(None, e))?;
        Ok(Tracer::CTracer { tools })
    }

    /// The loop's TRACER and TOOLS arguments.
    pub fn args(&self) -> [String; 2] {
        match self {
            Tracer::Monitoring => ["monitoring".into(), "-".into()],
            Tracer::CTracer { tools } => ["ctracer".into(), tools.display().to_string()],
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Tracer::Monitoring => "sys.monitoring".into(),
            Tracer::CTracer { .. } => format!("coverage.py {} CTracer", pyenv::COVERAGE_VERSION),
        }
    }
}

/// `--coverage`, `--coverage-blind`, `--coverage-report`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoverageConfig {
    /// False for --coverage-blind: traced and counted the same, but no case joins the corpus
    /// for new lines (the control arm of a comparison).
    pub feedback: bool,
    /// Where the HTML report goes at the end.
    pub report: Option<PathBuf>,
}

impl CoverageConfig {
    /// Only fakejvm's own loop is traced.
    pub fn check_mode(mode: ExecMode) -> Result<(), BadInput> {
        if mode.needs_confirmation() {
            return Ok(());
        }
        Err(BadInput::msg(format!(
            "--coverage traces fakejvm's persist loop, which the {} executor does not run: use --exec persistent or --exec warm-fork",
            mode.name()
        )))
    }
}

/// One point of the timeline.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TimelinePoint {
    /// Since the campaign's first run began (resumed runs go on counting).
    pub secs: f64,
    pub execs: u64,
    pub lines: usize,
    /// Lines first reached since the previous point.
    pub new_lines: usize,
    /// cov-N corpus entries so far.
    pub corpus_entries: u64,
}

/// The campaign's coverage: the map, the timeline and the corpus entries it made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Coverage {
    kind: String,
    format: u32,
    pub tracer: String,
    pub feedback: bool,
    /// File -> lines reached, by any case or start-up so far.
    map: BTreeMap<String, BTreeSet<u32>>,
    lines: usize,
    pub timeline: Vec<TimelinePoint>,
    /// cov-N corpus entries written; the next is cov-<entries>.
    pub entries: u64,
}

impl Coverage {
    pub fn new(tracer: &Tracer, feedback: bool) -> Coverage {
        Coverage {
            kind: COVERAGE_KIND.into(),
            format: COVERAGE_FORMAT,
            tracer: tracer.describe(),
            feedback,
            map: BTreeMap::new(),
            lines: 0,
            timeline: vec![],
            entries: 0,
        }
    }

    /// `out/coverage.json` of an earlier run, else a new map. A campaign that traced with the
    /// other arm (feedback vs blind) is the user's mistake in --out: the comparison would mix.
    pub fn load_or_new(out: &Path, tracer: &Tracer, feedback: bool) -> Result<Coverage, BadInput> {
        let path = out.join(COVERAGE_FILE);
        if !path.exists() {
            return Ok(Coverage::new(tracer, feedback));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| BadInput::new(&path, format!("cannot read: {e}")))?;
        let mut c: Coverage = serde_json::from_str(&text).map_err(|e| {
            BadInput::new(
                &path,
                format!("not a fuzz coverage map ({e}); use another --out or remove it"),
            )
        })?;
        if c.kind != COVERAGE_KIND || c.format != COVERAGE_FORMAT {
            return Err(BadInput::new(
                &path,
                format!("not a {COVERAGE_KIND} format {COVERAGE_FORMAT} file"),
            ));
        }
        if c.feedback != feedback {
            let arm = |f: bool| if f { "--coverage" } else { "--coverage-blind" };
            return Err(BadInput::new(
                &path,
                format!(
                    "holds a {} campaign, not a {} one: use another --out",
                    arm(c.feedback),
                    arm(feedback)
                ),
            ));
        }
        c.lines = c.map.values().map(BTreeSet::len).sum();
        Ok(c)
    }

    /// Rewrite `out/coverage.json`.
    pub fn save(&self, out: &Path) -> Result<(), HarnessError> {
        let path = out.join(COVERAGE_FILE);
        let bytes = serde_json::to_vec(self)
            .map_err(|e| HarnessError::new(format!("cannot serialise the coverage map: {e}")))?;
        crate::report::write_atomic(&path, &bytes).map_err(|e| HarnessError::io("write", &path, e))
    }

    /// Merge what a case ran; the number of lines no earlier case (or start-up) reached.
    pub fn add(&mut self, case: &CaseLines) -> usize {
        let mut new = 0;
        for (file, lines) in case {
            // Most cases reach nothing new: look before allocating the file's key.
            let known = self.map.get(file);
            if known.is_some_and(|k| lines.iter().all(|l| k.contains(l))) {
                continue;
            }
            let set = self.map.entry(file.clone()).or_default();
            for l in lines {
                if set.insert(*l) {
                    new += 1;
                }
            }
        }
        self.lines += new;
        new
    }

    /// Lines reached so far.
    pub fn lines(&self) -> usize {
        self.lines
    }

    pub fn files(&self) -> &BTreeMap<String, BTreeSet<u32>> {
        &self.map
    }

    /// The name of the next corpus entry (`cov-N`), counted.
    pub fn next_entry(&mut self) -> String {
        let name = format!("cov-{}", self.entries);
        self.entries += 1;
        name
    }

    /// Never reuse a name among `names` (the corpus on disk): a campaign killed after writing
    /// cov-N but before saving the map would otherwise write over that entry when resumed.
    pub fn skip_past<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        for n in names {
            if let Some(k) = n.strip_prefix("cov-").and_then(|k| k.parse::<u64>().ok()) {
                self.entries = self.entries.max(k + 1);
            }
        }
    }

    /// A timeline point at `secs` (since the first run began) after `execs` cases in all.
    pub fn point(&mut self, secs: f64, execs: u64) {
        let before = self.timeline.last().map(|p| p.lines).unwrap_or(0);
        self.timeline.push(TimelinePoint {
            secs: (secs * 10.0).round() / 10.0,
            execs,
            lines: self.lines,
            new_lines: self.lines.saturating_sub(before),
            corpus_entries: self.entries,
        });
    }

    /// The summary's part: per file (the key files first, then the rest reached), the lines hit
    /// against those `executable` says the file has.
    pub fn summary(&self, executable: &Executable, report: Option<&Path>) -> CoverageSummary {
        let files = report_files(&self.map)
            .into_iter()
            .map(|file| {
                let hit = self.map.get(&file);
                let exec = executable.get(&file).and_then(Option::as_ref);
                FileCoverage {
                    hit: hit.map(BTreeSet::len).unwrap_or(0),
                    executable: exec.map(BTreeSet::len),
                    hit_executable: match (hit, exec) {
                        (Some(h), Some(e)) => h.intersection(e).count(),
                        _ => 0,
                    },
                    file,
                }
            })
            .collect();
        CoverageSummary {
            tracer: self.tracer.clone(),
            feedback: self.feedback,
            lines: self.lines,
            files_reached: self.map.values().filter(|s| !s.is_empty()).count(),
            corpus_entries: self.entries,
            files,
            timeline: self.timeline.clone(),
            report: report.map(|r| r.join("index.html").display().to_string()),
        }
    }
}

/// The key files, then every other file reached, by name.
fn report_files(map: &BTreeMap<String, BTreeSet<u32>>) -> Vec<String> {
    let mut files: Vec<String> = KEY_FILES.iter().map(|f| f.to_string()).collect();
    files.extend(
        map.iter()
            .filter(|(f, s)| !s.is_empty() && !KEY_FILES.contains(&f.as_str()))
            .map(|(f, _)| f.clone()),
    );
    files
}

#[derive(Clone, Debug, Serialize)]
pub struct FileCoverage {
    /// Relative to the pyspark package.
    pub file: String,
    /// Lines reached.
    pub hit: usize,
    /// Lines of its compiled code (None: the file could not be read or compiled).
    pub executable: Option<usize>,
    /// Of `executable`, those reached.
    pub hit_executable: usize,
}

/// summary.json's `coverage`.
#[derive(Clone, Debug, Serialize)]
pub struct CoverageSummary {
    pub tracer: String,
    /// False for a --coverage-blind campaign.
    pub feedback: bool,
    pub lines: usize,
    pub files_reached: usize,
    /// cov-N corpus entries (none with --coverage-blind).
    pub corpus_entries: u64,
    pub files: Vec<FileCoverage>,
    pub timeline: Vec<TimelinePoint>,
    /// The HTML report's index, when one was written.
    pub report: Option<String>,
}

impl CoverageSummary {
    /// One line for the terminal.
    pub fn text(&self) -> String {
        let per: Vec<String> = self
            .files
            .iter()
            .filter(|f| KEY_FILES.contains(&f.file.as_str()))
            .map(|f| match f.executable {
                Some(e) => format!("{} {}/{e}", f.file, f.hit_executable),
                None => format!("{} {}", f.file, f.hit),
            })
            .collect();
        let mut s = format!(
            "  coverage ({}, {}): {} lines of pyspark in {} files; {}; corpus +{} for new lines",
            if self.feedback { "feedback" } else { "blind" },
            self.tracer,
            self.lines,
            self.files_reached,
            per.join(", "),
            self.corpus_entries
        );
        if let Some(r) = &self.report {
            s.push_str(&format!("; report {r}"));
        }
        s
    }
}

/// File -> its executable lines (None: unreadable or not compilable).
pub type Executable = BTreeMap<String, Option<BTreeSet<u32>>>;

/// The executable lines of `files` (relative to `env`'s pyspark package), computed once by the
/// target interpreter from the code objects of their compiled source (the loop's `lines` mode).
pub fn executable_lines(env: &PythonEnv, files: &[String]) -> Result<Executable, HarnessError> {
    let mut args = vec![env.pyspark_dir.display().to_string()];
    args.extend(files.iter().cloned());
    let out = pyenv::run_python(
        &env.python,
        super::server::LOOP,
        &["lines".to_string()]
            .into_iter()
            .chain(args)
            .collect::<Vec<_>>(),
        Duration::from_secs(120),
    )
    .map_err(|e| HarnessError::new(format!("computing executable lines: {e}")))?;
    let raw: BTreeMap<String, Option<Vec<u32>>> = serde_json::from_slice(&out).map_err(|e| {
        HarnessError::new(format!(
            "computing executable lines: unexpected answer: {e}"
        ))
    })?;
    Ok(raw
        .into_iter()
        .map(|(f, l)| (f, l.map(|l| l.into_iter().collect())))
        .collect())
}

/// What the report pages say about the campaign.
pub struct ReportHead<'a> {
    pub pyspark: &'a str,
    pub python: &'a str,
    pub execs: u64,
}

/// Write the HTML report into `dir`: `index.html` (every key file and every file reached, lines
/// hit / executable) and one page per file with its source, hit lines marked. Each file is
/// written atomically, the index last, so an index never links a page that is not there.
pub fn write_report(
    dir: &Path,
    pyspark_dir: &Path,
    cov: &Coverage,
    executable: &Executable,
    head: &ReportHead,
) -> Result<(), HarnessError> {
    let summary = cov.summary(executable, None);
    let title = format!(
        "pyspark {} (Python {}): {} lines reached in {} cases, {}, {}",
        head.pyspark,
        head.python,
        cov.lines(),
        head.execs,
        if cov.feedback {
            "coverage feedback"
        } else {
            "blind (no feedback)"
        },
        cov.tracer
    );
    let write = |name: &str, html: String| {
        let path = dir.join(name);
        write_atomic(&path, html.as_bytes(), WriteOptions::REPORT)
            .map_err(|e| HarnessError::io("write the coverage report", &path, e))
    };
    let mut rows = String::new();
    for f in &summary.files {
        let page = page_name(&f.file);
        let source = std::fs::read_to_string(pyspark_dir.join(&f.file)).ok();
        let none = BTreeSet::new();
        let hit = cov.files().get(&f.file).unwrap_or(&none);
        let exec = executable.get(&f.file).and_then(Option::as_ref);
        write(
            &page,
            file_page(&f.file, source.as_deref(), hit, exec, &title),
        )?;
        let pct = f
            .executable
            .filter(|e| *e > 0)
            .map(|e| format!("{:.1}%", 100.0 * f.hit_executable as f64 / e as f64))
            .unwrap_or_else(|| "-".into());
        rows.push_str(&format!(
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{pct}</td></tr>\n",
            escape(&page),
            escape(&f.file),
            f.hit_executable,
            f.executable
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
        ));
    }
    let index = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>fakejvm fuzz coverage</title>{STYLE}</head><body>\n\
         <h1>fakejvm fuzz coverage</h1>\n<p>{}</p>\n\
         <p>Lines of pyspark's files that the campaign's cases ran (and pyspark's imports when a server started). \
         Executable lines are those of the code objects of each file's compiled source.</p>\n\
         <table><tr><th>file</th><th>lines hit</th><th>executable</th><th>%</th></tr>\n{rows}</table>\n</body></html>\n",
        escape(&title)
    );
    write("index.html", index)
}

/// "sql/pandas/serializers.py" -> "sql.pandas.serializers.py.html".
fn page_name(file: &str) -> String {
    format!("{}.html", file.replace('/', "."))
}

const STYLE: &str = "<style>body{font-family:sans-serif}table{border-collapse:collapse}\
td,th{padding:1px 8px;text-align:left}pre{margin:0}.hit{background:#cfc}.miss{background:#fcc}\
.n{color:#888;text-align:right}</style>";

fn file_page(
    file: &str,
    source: Option<&str>,
    hit: &BTreeSet<u32>,
    exec: Option<&BTreeSet<u32>>,
    title: &str,
) -> String {
    let mut body = String::new();
    match source {
        Some(src) => {
            body.push_str("<table>\n");
            for (i, line) in src.lines().enumerate() {
                let n = i as u32 + 1;
                let class = if hit.contains(&n) {
                    "hit"
                } else if exec.is_some_and(|e| e.contains(&n)) {
                    "miss"
                } else {
                    ""
                };
                body.push_str(&format!(
                    "<tr class=\"{class}\"><td class=\"n\">{n}</td><td><pre>{}</pre></td></tr>\n",
                    escape(line)
                ));
            }
            body.push_str("</table>\n");
        }
        None => body.push_str("<p>The source could not be read.</p>\n"),
    }
    let count = match exec {
        Some(e) => format!(
            "{} of {} executable lines hit",
            hit.intersection(e).count(),
            e.len()
        ),
        None => format!("{} lines hit", hit.len()),
    };
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{f}</title>{STYLE}</head><body>\n\
         <p><a href=\"index.html\">index</a> | {t}</p>\n<h1>{f}</h1>\n<p>{count} \
         (<span class=\"hit\">hit</span>, <span class=\"miss\">not hit</span>)</p>\n{body}</body></html>\n",
        f = escape(file),
        t = escape(title),
    )
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(pairs: &[(&str, &[u32])]) -> CaseLines {
        pairs
            .iter()
            .map(|(f, l)| (f.to_string(), l.to_vec()))
            .collect()
    }

    #[test]
    fn only_lines_no_earlier_case_reached_are_new() {
        let mut c = Coverage::new(&Tracer::Monitoring, true);
        assert_eq!(c.add(&lines(&[("worker.py", &[1, 2, 3])])), 3);
        assert_eq!(c.add(&lines(&[("worker.py", &[2, 3])])), 0);
        assert_eq!(
            c.add(&lines(&[("worker.py", &[3, 4]), ("serializers.py", &[9])])),
            2
        );
        assert_eq!(c.lines(), 5);
        c.point(1.0, 10);
        c.add(&lines(&[("worker.py", &[7])]));
        assert_eq!(c.next_entry(), "cov-0");
        c.skip_past(&["cov-3".to_string(), "ab12".to_string()]);
        assert_eq!(c.next_entry(), "cov-4");
        c.entries = 1;
        c.point(2.04, 20);
        let t: Vec<(usize, usize, u64)> = c
            .timeline
            .iter()
            .map(|p| (p.lines, p.new_lines, p.corpus_entries))
            .collect();
        assert_eq!(t, [(5, 5, 0), (6, 1, 1)]);
        assert_eq!(c.timeline[1].secs, 2.0);
    }

    #[test]
    fn a_map_of_the_other_arm_is_not_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Coverage::new(&Tracer::Monitoring, false);
        c.add(&lines(&[("worker.py", &[1, 2])]));
        c.save(dir.path()).unwrap();
        let again = Coverage::load_or_new(dir.path(), &Tracer::Monitoring, false).unwrap();
        assert_eq!(again.lines(), 2);
        let e = Coverage::load_or_new(dir.path(), &Tracer::Monitoring, true).unwrap_err();
        assert!(e.to_string().contains("--coverage-blind campaign"), "{e}");
    }

    #[test]
    fn only_the_persist_loop_executors_are_traced() {
        assert!(CoverageConfig::check_mode(ExecMode::Persistent).is_ok());
        assert!(CoverageConfig::check_mode(ExecMode::WarmFork).is_ok());
        let e = CoverageConfig::check_mode(ExecMode::ForkServer).unwrap_err();
        assert!(
            e.to_string()
                .contains("use --exec persistent or --exec warm-fork"),
            "{e}"
        );
    }

    #[test]
    fn the_report_lists_the_key_files_and_marks_hit_lines() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(
            src.path().join("worker.py"),
            "a = 1\n\nif a < 2:\n    b = 2\n",
        )
        .unwrap();
        std::fs::create_dir_all(src.path().join("core")).unwrap();
        std::fs::write(src.path().join("core/rdd.py"), "x = 1\n").unwrap();
        let mut c = Coverage::new(&Tracer::Monitoring, true);
        c.add(&lines(&[("worker.py", &[1, 3]), ("core/rdd.py", &[1])]));
        let exec: Executable = [
            ("worker.py".to_string(), Some([1, 3, 4].into())),
            ("core/rdd.py".to_string(), Some([1].into())),
        ]
        .into();
        let out = tempfile::tempdir().unwrap();
        let head = ReportHead {
            pyspark: "4.0.5",
            python: "3.11",
            execs: 7,
        };
        write_report(out.path(), src.path(), &c, &exec, &head).unwrap();
        let index = std::fs::read_to_string(out.path().join("index.html")).unwrap();
        assert!(
            index.contains("<a href=\"worker.py.html\">worker.py</a></td><td>2</td><td>3</td>"),
            "{index}"
        );
        assert!(index.contains("sql.pandas.serializers.py.html") && index.contains("core/rdd.py"));
        let page = std::fs::read_to_string(out.path().join("worker.py.html")).unwrap();
        assert!(
            page.contains("<tr class=\"hit\"><td class=\"n\">3</td><td><pre>if a &lt; 2:</pre>")
        );
        assert!(page.contains("<tr class=\"miss\"><td class=\"n\">4</td>"));
        assert!(page.contains("<tr class=\"\"><td class=\"n\">2</td>"));
        let s = c.summary(&exec, Some(out.path()));
        assert!(s.text().contains("worker.py 2/3"), "{}", s.text());
    }
}
