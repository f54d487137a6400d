//! What a campaign keeps in `--out` between runs: `state.json` (counts, signatures, runs), the
//! reproducer files it names, and `corpus/`: one case per distinct behaviour (named by its
//! signature id) and, with coverage feedback, one per case that reached new lines of pyspark
//! (`cov-N.json`, see `super::coverage`).
//!
//! Every write is atomic (report::write_atomic) and every failed write is a [`HarnessError`]:
//! the campaign aborts on it rather than claim a finding whose file does not exist. A state file
//! of another pyspark, Python or mode is the user's mistake in `--out` ([`BadInput`]).

use super::case::{Case, Frame};
use super::exec::ExecMode;
use super::reproducer::Reproducer;
use super::seeds::Seed;
use super::signature::Signature;
use super::summary::SUMMARY_FILE;
use crate::error::{BadInput, HarnessError};
use crate::protocol::Dialect;
use crate::pyenv::PythonEnv;
use crate::verdict::OutcomeKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const CORPUS_DIR: &str = "corpus";
const STATE_KIND: &str = "fakejvm-fuzz-state";
const STATE_FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FindingRecord {
    pub signature: Signature,
    pub text: String,
    pub count: u64,
    /// The reproducer, relative to --out.
    pub file: String,
    pub minimised: bool,
    /// Did not reproduce on a fresh worker when checked (kept, not minimised).
    #[serde(default)]
    pub flaky: bool,
    pub len: usize,
    pub first_exec: u64,
    pub first_at: String,
}

/// A signature the persistent or warm-fork executor saw that the fork server did not reproduce:
/// dropped, not reported, but counted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotConfirmedRecord {
    pub text: String,
    /// Cases that ended in it.
    pub count: u64,
    /// Of those, how many were re-run on the fork server (at most `CONFIRM_TRIES`).
    pub checked: u64,
    /// What the fork server made of the last one re-run.
    pub daemon_said: String,
    pub first_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExpectedRecord {
    pub text: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub started: String,
    pub execs: u64,
    pub elapsed_ms: u64,
    pub finished: bool,
}

/// `state.json`: everything a resumed campaign needs besides the corpus and the reproducers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct State {
    kind: String,
    format: u32,
    pub(crate) pyspark: String,
    pub(crate) python: String,
    dialect: Dialect,
    pub(crate) mode: ExecMode,
    pub(crate) execs: u64,
    pub(crate) elapsed_ms: u64,
    pub(crate) minimise_runs: u64,
    pub(crate) harness_errors: u64,
    pub(crate) daemon_restarts: u64,
    pub(crate) runs: Vec<RunRecord>,
    pub(crate) findings: BTreeMap<String, FindingRecord>,
    pub(crate) expected: BTreeMap<String, ExpectedRecord>,
    /// Processes found alive in the daemon's group with no case to blame (killed).
    #[serde(default)]
    pub(crate) unattributed_leaks: Vec<(i32, String)>,
    /// Persistent and warm-fork campaigns: signatures the fork server did not reproduce.
    #[serde(default)]
    pub(crate) not_confirmed: BTreeMap<String, NotConfirmedRecord>,
}

impl State {
    fn fresh(env: &PythonEnv, dialect: Dialect, mode: ExecMode) -> State {
        State {
            kind: STATE_KIND.into(),
            format: STATE_FORMAT,
            pyspark: env.pyspark.to_string(),
            python: env.python_version.clone(),
            dialect,
            mode,
            execs: 0,
            elapsed_ms: 0,
            minimise_runs: 0,
            harness_errors: 0,
            daemon_restarts: 0,
            runs: vec![],
            findings: BTreeMap::new(),
            expected: BTreeMap::new(),
            unattributed_leaks: vec![],
            not_confirmed: BTreeMap::new(),
        }
    }

    /// The state in `out`, or a fresh one when there is none; reproducers written just before a
    /// kill (when state.json was not rewritten yet) are taken in as findings.
    pub(crate) fn load_or_new(
        out: &Path,
        env: &PythonEnv,
        dialect: Dialect,
        mode: ExecMode,
    ) -> Result<State, BadInput> {
        let path = out.join(STATE_FILE);
        let fresh = State::fresh(env, dialect, mode);
        let mut st = if path.exists() {
            State::load(&path, &fresh)?
        } else {
            fresh
        };
        for (id, file, r) in reproducers_in(out) {
            st.findings.entry(id).or_insert_with(|| FindingRecord {
                text: r.signature.text(),
                signature: r.signature.clone(),
                count: r.found.count.max(1),
                file,
                minimised: r.minimised,
                flaky: false,
                len: r.request.len,
                first_exec: r.found.exec,
                first_at: r.found.at.clone(),
            });
        }
        Ok(st)
    }

    /// Read `path`, which must hold a campaign of the same pyspark, Python and mode as `want`.
    fn load(path: &Path, want: &State) -> Result<State, BadInput> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput::new(path, format!("cannot read: {e}")))?;
        let st: State = serde_json::from_str(&text).map_err(|e| {
            BadInput::new(
                path,
                format!("not a fuzz campaign state ({e}); use another --out or remove it"),
            )
        })?;
        if st.kind != STATE_KIND || st.format != STATE_FORMAT {
            return Err(BadInput::new(
                path,
                format!(
                    "a {} format {} file, not a {STATE_KIND} format {STATE_FORMAT}",
                    st.kind, st.format
                ),
            ));
        }
        if st.pyspark != want.pyspark || st.mode != want.mode || st.python != want.python {
            return Err(BadInput::new(
                path,
                format!(
                    "holds a campaign for pyspark {} / Python {} / {} mode, not pyspark {} / Python {} / {} mode: use another --out to start a new one",
                    st.pyspark,
                    st.python,
                    st.mode.name(),
                    want.pyspark,
                    want.python,
                    want.mode.name()
                ),
            ));
        }
        Ok(st)
    }

    /// Rewrite `out/state.json`.
    pub(crate) fn write(&self, out: &Path) -> Result<(), HarnessError> {
        let path = out.join(STATE_FILE);
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| HarnessError::new(format!("cannot serialise the campaign state: {e}")))?;
        bytes.push(b'\n');
        crate::report::write_atomic(&path, &bytes).map_err(|e| HarnessError::io("write", &path, e))
    }

    /// Findings of an earlier run that still want minimising: (signature id, reproducer file).
    pub(crate) fn unminimised(&self, out: &Path) -> Vec<(String, PathBuf)> {
        self.findings
            .iter()
            .filter(|(_, f)| {
                !f.minimised && !f.flaky && f.signature.kind != OutcomeKind::LeakedProcess
            })
            .map(|(id, f)| (id.clone(), out.join(&f.file)))
            .filter(|(_, p)| p.is_file())
            .collect()
    }

    /// Rewrite each reproducer's `found.count` with the campaign's count.
    pub(crate) fn update_counts(&self, out: &Path) -> Result<(), HarnessError> {
        for f in self.findings.values() {
            let p = out.join(&f.file);
            if let Ok(mut r) = Reproducer::load(&p) {
                if r.found.count != f.count {
                    r.found.count = f.count;
                    save_reproducer(&r, &p)?;
                }
            }
        }
        Ok(())
    }
}

/// Write a reproducer file; failing to is the campaign's own failure.
pub(crate) fn save_reproducer(r: &Reproducer, path: &Path) -> Result<(), HarnessError> {
    r.save(path)
        .map_err(|e| HarnessError::io("write the reproducer", path, e))
}

/// Reproducer files directly in `out`: (signature id, file name, reproducer).
fn reproducers_in(out: &Path) -> Vec<(String, String, Reproducer)> {
    let Ok(dir) = std::fs::read_dir(out) else {
        return vec![];
    };
    let mut found = vec![];
    for e in dir.flatten() {
        let p = e.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if !name.ends_with(".json") || name == STATE_FILE || name == SUMMARY_FILE {
            continue;
        }
        if let Ok(r) = Reproducer::load(&p) {
            found.push((r.signature_id.clone(), name, r));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

/// One corpus file: the case's frames and what it showed.
#[derive(Serialize, Deserialize)]
struct CorpusEntry {
    seed: String,
    signature: String,
    /// A `cov-N` entry: the lines of pyspark it was the first to reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new_lines: Option<usize>,
    frames: Vec<Frame>,
}

/// The corpus of an earlier run, by signature id; a case whose seed is gone has no seed.
pub(crate) fn load_corpus(out: &Path, seeds: &[Seed]) -> Vec<(String, Case)> {
    let Ok(dir) = std::fs::read_dir(out.join(CORPUS_DIR)) else {
        return vec![];
    };
    let mut entries: Vec<(String, Case)> = vec![];
    for e in dir.flatten() {
        let p = e.path();
        let Some(id) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let Ok(entry) = serde_json::from_str::<CorpusEntry>(&text) else {
            continue;
        };
        let seed = seeds.iter().position(|s| s.name == entry.seed);
        entries.push((
            id,
            Case {
                seed,
                frames: entry.frames,
            },
        ));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// Save `case` as the corpus entry of signature `sig` (its id names the file).
pub(crate) fn save_corpus_entry(
    out: &Path,
    case: &Case,
    seeds: &[Seed],
    sig: &Signature,
) -> Result<(), HarnessError> {
    let entry = CorpusEntry::of(case, seeds, sig.text(), None);
    write_corpus_entry(out, &sig.id(), &entry)
}

/// Save `case`, the first to reach `new_lines` lines of pyspark, as corpus entry `name`
/// (`cov-N`); `signature` is what it ended in.
pub(crate) fn save_coverage_entry(
    out: &Path,
    name: &str,
    case: &Case,
    seeds: &[Seed],
    signature: String,
    new_lines: usize,
) -> Result<(), HarnessError> {
    let entry = CorpusEntry::of(case, seeds, signature, Some(new_lines));
    write_corpus_entry(out, name, &entry)
}

impl CorpusEntry {
    /// The entry for `case`, named after the seed it grew from.
    fn of(case: &Case, seeds: &[Seed], signature: String, new_lines: Option<usize>) -> Self {
        let seed = case
            .seed_in(seeds)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        CorpusEntry {
            seed,
            signature,
            new_lines,
            frames: case.frames.clone(),
        }
    }
}

fn write_corpus_entry(out: &Path, name: &str, entry: &CorpusEntry) -> Result<(), HarnessError> {
    let path = out.join(CORPUS_DIR).join(format!("{name}.json"));
    let bytes = serde_json::to_vec(entry)
        .map_err(|e| HarnessError::new(format!("cannot serialise a corpus entry: {e}")))?;
    crate::report::write_atomic(&path, &bytes)
        .map_err(|e| HarnessError::io("write the corpus entry", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> PythonEnv {
        PythonEnv {
            python: "/nonexistent/python".into(),
            pyspark: "4.0.5".parse().unwrap(),
            python_version: "3.11".into(),
            pyspark_dir: "/nonexistent/pyspark".into(),
            flavor: None,
        }
    }

    #[test]
    fn a_state_that_cannot_be_written_is_a_harness_error() {
        let st = State::fresh(&env(), Dialect::A, ExecMode::ForkServer);
        let e = st.write(Path::new("/proc/nonexistent")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot write /proc/nonexistent/state.json: "),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        st.write(dir.path()).unwrap();
        let again =
            State::load_or_new(dir.path(), &env(), Dialect::A, ExecMode::ForkServer).unwrap();
        assert_eq!(again.pyspark, "4.0.5");
    }

    #[test]
    fn coverage_entries_are_corpus_entries_named_cov_n() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(CORPUS_DIR)).unwrap();
        let case = Case {
            seed: None,
            frames: vec![Frame {
                kind: crate::protocol::SpanKind::Header,
                bytes: vec![0, 0, 0, 4],
                touched: true,
            }],
        };
        save_coverage_entry(dir.path(), "cov-0", &case, &[], "Passed".into(), 12).unwrap();
        let text = std::fs::read_to_string(dir.path().join("corpus/cov-0.json")).unwrap();
        assert!(text.contains("\"new_lines\":12"), "{text}");
        let back = load_corpus(dir.path(), &[]);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, "cov-0");
        assert_eq!(back[0].1.to_bytes(), vec![0, 0, 0, 4]);
    }

    #[test]
    fn a_state_of_another_mode_is_bad_input_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        State::fresh(&env(), Dialect::A, ExecMode::Reuse)
            .write(dir.path())
            .unwrap();
        let e =
            State::load_or_new(dir.path(), &env(), Dialect::A, ExecMode::ForkServer).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("state.json: holds a campaign for pyspark 4.0.5")
                && text.contains("another --out"),
            "{text}"
        );
    }
}
