//! `fakejvm fuzz merge DIR... --out DIR`: the findings of several campaigns (one per machine of
//! a nightly, say) as one deduplicated set.
//!
//! Each DIR is a campaign's `--out` (its `state.json` and the reproducer files it names) or an
//! earlier merge (its `merged.json`), so merges compose. Findings are joined by signature id
//! (signatures are stable across machines with the same pyspark): counts are added up, the
//! earliest first-seen time is kept with the campaign it came from, and one reproducer is kept
//! per signature, the best one (minimised, not flaky, shortest, earliest), copied into `--out`
//! with the merged count. `--out/merged.json` lists the sources, every finding and the
//! not-confirmed signatures of persistent and warm-fork campaigns. Campaigns of different
//! pyspark or Python versions are not merged (their signatures are not comparable).

use super::reproducer::Reproducer;
use super::state::{FindingRecord, NotConfirmedRecord, State, STATE_FILE};
use crate::error::{BadInput, HarnessError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MERGED_FILE: &str = "merged.json";
const MERGED_KIND: &str = "fakejvm-fuzz-merge";
const MERGED_FORMAT: u32 = 1;

#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// Campaign output folders (with a state.json) or earlier merges (with a merged.json).
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Where the merged set goes (created; may be one of the inputs).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// One campaign (or earlier merge) that went into a merge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub dir: String,
    /// fork_server, persistent, ...; "merge" for an earlier merge's sources taken over.
    pub mode: String,
    pub execs: u64,
    pub elapsed_ms: u64,
    pub findings: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MergedFinding {
    pub id: String,
    pub signature: String,
    /// All campaigns together.
    pub count: u64,
    /// The earliest first-seen time (UTC, RFC 3339) and the source it is from.
    pub first_at: String,
    pub first_in: String,
    /// Every source that saw it.
    pub seen_in: Vec<String>,
    /// The reproducer kept, relative to the merge's folder.
    pub file: String,
    pub minimised: bool,
    pub flaky: bool,
    pub len: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Merged {
    pub kind: String,
    pub format: u32,
    pub pyspark: String,
    pub python: String,
    pub sources: Vec<Source>,
    /// Most frequent first.
    pub findings: Vec<MergedFinding>,
    /// Persistent and warm-fork campaigns: what the fork server did not reproduce, by signature.
    #[serde(default)]
    pub not_confirmed: BTreeMap<String, NotConfirmedRecord>,
}

/// A finding as read from one input, with its reproducer.
struct Candidate {
    finding: MergedFinding,
    repro: Option<Reproducer>,
}

/// One input folder, read in full before anything is written.
struct Input {
    dir: PathBuf,
    pyspark: String,
    python: String,
    sources: Vec<Source>,
    candidates: Vec<Candidate>,
    not_confirmed: BTreeMap<String, NotConfirmedRecord>,
}

fn read_input(dir: &Path) -> Result<Input, BadInput> {
    let name = dir.display().to_string();
    let state_path = dir.join(STATE_FILE);
    let merged_path = dir.join(MERGED_FILE);
    let load_repro = |file: &str| Reproducer::load(&dir.join(file)).ok();
    if merged_path.is_file() {
        let text = std::fs::read_to_string(&merged_path)
            .map_err(|e| BadInput::new(&merged_path, format!("cannot read: {e}")))?;
        let m: Merged = serde_json::from_str(&text)
            .map_err(|e| BadInput::new(&merged_path, format!("not a fuzz merge: {e}")))?;
        if m.kind != MERGED_KIND || m.format != MERGED_FORMAT {
            return Err(BadInput::new(
                &merged_path,
                format!(
                    "a {} format {} file, not a {MERGED_KIND} format {MERGED_FORMAT}",
                    m.kind, m.format
                ),
            ));
        }
        let candidates = m
            .findings
            .into_iter()
            .map(|f| Candidate {
                repro: load_repro(&f.file),
                finding: f,
            })
            .collect();
        return Ok(Input {
            dir: dir.to_path_buf(),
            pyspark: m.pyspark,
            python: m.python,
            sources: m.sources,
            candidates,
            not_confirmed: m.not_confirmed,
        });
    }
    if !state_path.is_file() {
        return Err(BadInput::new(
            dir,
            format!("neither a campaign's {STATE_FILE} nor a {MERGED_FILE} here: give the --out folders of `fakejvm fuzz`"),
        ));
    }
    let text = std::fs::read_to_string(&state_path)
        .map_err(|e| BadInput::new(&state_path, format!("cannot read: {e}")))?;
    let st: State = serde_json::from_str(&text)
        .map_err(|e| BadInput::new(&state_path, format!("not a fuzz campaign state ({e})")))?;
    let candidates = st
        .findings
        .iter()
        .map(|(id, f): (&String, &FindingRecord)| Candidate {
            finding: MergedFinding {
                id: id.clone(),
                signature: f.text.clone(),
                count: f.count,
                first_at: f.first_at.clone(),
                first_in: name.clone(),
                seen_in: vec![name.clone()],
                file: f.file.clone(),
                minimised: f.minimised,
                flaky: f.flaky,
                len: f.len,
            },
            repro: load_repro(&f.file),
        })
        .collect();
    Ok(Input {
        dir: dir.to_path_buf(),
        pyspark: st.pyspark.clone(),
        python: st.python.clone(),
        sources: vec![Source {
            dir: name,
            mode: st.mode.name().to_string(),
            execs: st.execs,
            elapsed_ms: st.elapsed_ms,
            findings: st.findings.len(),
        }],
        candidates,
        not_confirmed: st.not_confirmed.clone(),
    })
}

/// The better reproducer to keep of two for one signature: minimised, not flaky, with a file,
/// shorter, seen earlier.
fn better(a: &Candidate, b: &Candidate) -> bool {
    let key = |c: &Candidate| {
        (
            c.repro.is_none(),
            !c.finding.minimised,
            c.finding.flaky,
            c.finding.len,
            c.finding.first_at.clone(),
        )
    };
    key(a) < key(b)
}

/// Join `inputs` (already read) into one set.
fn join(inputs: Vec<Input>) -> Result<(Merged, BTreeMap<String, Option<Reproducer>>), BadInput> {
    let first = inputs
        .first()
        .ok_or_else(|| BadInput::msg("fuzz merge: no folders given"))?;
    let (pyspark, python) = (first.pyspark.clone(), first.python.clone());
    let first_dir = first.dir.clone();
    let mut sources = vec![];
    let mut best: BTreeMap<String, Candidate> = BTreeMap::new();
    let mut not_confirmed: BTreeMap<String, NotConfirmedRecord> = BTreeMap::new();
    for input in inputs {
        if input.pyspark != pyspark || input.python != python {
            return Err(BadInput::new(
                &input.dir,
                format!(
                    "holds pyspark {} / Python {}, but {} holds pyspark {pyspark} / Python {python}: merge campaigns of one pyspark and Python (signatures differ across versions)",
                    input.pyspark,
                    input.python,
                    first_dir.display()
                ),
            ));
        }
        for s in input.sources {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        for c in input.candidates {
            match best.remove(&c.finding.id) {
                None => {
                    best.insert(c.finding.id.clone(), c);
                }
                Some(old) => {
                    let count = old.finding.count + c.finding.count;
                    let (first_at, first_in) = if c.finding.first_at < old.finding.first_at {
                        (c.finding.first_at.clone(), c.finding.first_in.clone())
                    } else {
                        (old.finding.first_at.clone(), old.finding.first_in.clone())
                    };
                    let mut seen_in = old.finding.seen_in.clone();
                    for s in &c.finding.seen_in {
                        if !seen_in.contains(s) {
                            seen_in.push(s.clone());
                        }
                    }
                    let mut keep = if better(&c, &old) { c } else { old };
                    keep.finding.count = count;
                    keep.finding.first_at = first_at;
                    keep.finding.first_in = first_in;
                    keep.finding.seen_in = seen_in;
                    best.insert(keep.finding.id.clone(), keep);
                }
            }
        }
        for (id, r) in input.not_confirmed {
            match not_confirmed.get_mut(&id) {
                None => {
                    not_confirmed.insert(id, r);
                }
                Some(old) => {
                    old.count += r.count;
                    old.checked += r.checked;
                    if r.first_at < old.first_at {
                        old.first_at = r.first_at;
                    }
                }
            }
        }
    }
    // A signature some campaign confirmed is a finding, whatever another one could not confirm.
    not_confirmed.retain(|id, _| !best.contains_key(id));
    let mut repros = BTreeMap::new();
    let mut findings = vec![];
    for (id, mut c) in best {
        c.finding.file = match &c.repro {
            Some(r) => super::reproducer::file_name(&r.signature),
            None => String::new(), // its file was missing or unreadable in every source
        };
        repros.insert(id, c.repro);
        findings.push(c.finding);
    }
    findings.sort_by(|a, b| b.count.cmp(&a.count).then(a.id.cmp(&b.id)));
    Ok((
        Merged {
            kind: MERGED_KIND.into(),
            format: MERGED_FORMAT,
            pyspark,
            python,
            sources,
            findings,
            not_confirmed,
        },
        repros,
    ))
}

/// Merge `dirs` into `out`: the merged set, its reproducers, `merged.json`.
pub fn merge(dirs: &[PathBuf], out: &Path) -> anyhow::Result<Merged> {
    let mut inputs = vec![];
    for d in dirs {
        inputs.push(read_input(d)?);
    }
    let (merged, repros) = join(inputs)?;
    std::fs::create_dir_all(out)
        .map_err(|e| BadInput::new(out, format!("cannot create the output directory: {e}")))?;
    for f in &merged.findings {
        let Some(Some(r)) = repros.get(&f.id) else {
            continue;
        };
        let mut r = r.clone();
        r.found.count = f.count;
        r.found.at = f.first_at.clone();
        let path = out.join(&f.file);
        r.replay = format!("fakejvm repro {}", path.display());
        r.save(&path)
            .map_err(|e| HarnessError::io("write the reproducer", &path, e))?;
    }
    let path = out.join(MERGED_FILE);
    let mut bytes = serde_json::to_vec_pretty(&merged)?;
    bytes.push(b'\n');
    crate::report::write_atomic(&path, &bytes).map_err(|e| HarnessError::io("write", &path, e))?;
    Ok(merged)
}

impl Merged {
    pub fn text(&self, out: &Path) -> String {
        let execs: u64 = self.sources.iter().map(|s| s.execs).sum();
        let mut s = format!(
            "fuzz merge: pyspark {} | {} campaign(s), {} execs | {} distinct finding(s)\n",
            self.pyspark,
            self.sources.len(),
            execs,
            self.findings.len()
        );
        for f in &self.findings {
            s.push_str(&format!(
                "  {:>6}x  {}  [seen in {}, first {} in {}]  {}\n",
                f.count,
                f.file,
                f.seen_in.len(),
                f.first_at,
                f.first_in,
                f.signature
            ));
        }
        if !self.not_confirmed.is_empty() {
            let cases: u64 = self.not_confirmed.values().map(|r| r.count).sum();
            s.push_str(&format!(
                "  not confirmed: {cases} (case(s) of {} signature(s))\n",
                self.not_confirmed.len()
            ));
        }
        s.push_str(&format!("  merged: {}", out.join(MERGED_FILE).display()));
        s
    }
}

/// `fakejvm fuzz merge`. Exit codes: 0 merged; a `BadInput` error (a folder that is not a
/// campaign, versions that differ) means 2, a file that cannot be written 3.
pub fn merge_cmd(args: &MergeArgs) -> anyhow::Result<u8> {
    let merged = merge(&args.dirs, &args.out)?;
    println!("{}", merged.text(&args.out));
    Ok(0)
}
