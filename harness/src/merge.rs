//! `fakejvm report merge A.json B.json ...`: the JSON reports of a run's shards (`--shard I/N`)
//! joined into the report of the whole run: the text it prints is the one the unsharded run
//! prints, and `--junit` / `--json` write its JUnit file and JSON report.
//!
//! Reports are grouped by what they ran: scenarios by (pyspark, Python, paths), goldens by
//! paths. Each group must be whole (shards 1..N each once, every scenario or golden of the run
//! exactly once): a missing shard is bad input, never a smaller table.

use crate::error::BadInput;
use crate::outputs::{self, Entry, GoldenPart, OutputArgs, RunCommand, RunDoc, ScenarioPart};
use crate::shard::Shard;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct MergeArgs {
    /// The shards' JSON reports (written by `run`, `check` or `replay` with `--json`).
    #[arg(required = true, value_name = "REPORT")]
    pub reports: Vec<PathBuf>,
    /// Write the merged JSON report here (written atomically).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the merged JUnit XML here (written atomically).
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
}

/// Prints the merged run's text; exit 1 if anything failed, 0 if not.
pub fn merge_cmd(args: MergeArgs) -> anyhow::Result<u8> {
    let mut docs = vec![];
    for f in &args.reports {
        for d in RunDoc::read(f)? {
            docs.push((f.clone(), d));
        }
    }
    let merged = merge(docs)?;
    // A matrix's shards merge into its table; any other run prints as it did unsharded.
    match crate::matrix::table_of_runs(&merged) {
        Some(table) => print!("{}", table.to_text()),
        None => {
            for d in &merged {
                print!("{}", d.text());
            }
        }
    }
    let out = OutputArgs {
        json: args.json,
        junit: args.junit,
        shard: None,
    };
    outputs::write(&merged, &out)?;
    eprintln!(
        "fakejvm: merged {} report(s) into {} run(s)",
        args.reports.len(),
        merged.len()
    );
    Ok(if merged.iter().any(RunDoc::failed) {
        1
    } else {
        0
    })
}

/// One shard's part of a group, and the file it came from.
struct Piece<P> {
    file: PathBuf,
    shard: Shard,
    part: P,
}

/// Join the runs' parts, group by group; each group must be whole. One scenario group and at
/// most one golden group make one run (a merged `check`); otherwise each group is its own run,
/// scenarios by version first.
pub fn merge(docs: Vec<(PathBuf, RunDoc)>) -> Result<Vec<RunDoc>, BadInput> {
    let mut scenario_groups: BTreeMap<_, Vec<Piece<ScenarioPart>>> = BTreeMap::new();
    let mut golden_groups: BTreeMap<Vec<String>, Vec<Piece<GoldenPart>>> = BTreeMap::new();
    // The command of the first report holding scenarios, and of the first holding goldens.
    let mut scenario_command = None;
    let mut golden_command = None;
    for (file, d) in docs {
        let shard = d.shard.unwrap_or(Shard::ALL);
        if let Some(s) = d.scenarios {
            scenario_command.get_or_insert(d.command);
            let key = (
                outputs::version_key(&s.pyspark),
                s.python_version.clone(),
                s.paths.clone(),
            );
            scenario_groups.entry(key).or_default().push(Piece {
                file: file.clone(),
                shard,
                part: s,
            });
        }
        if let Some(g) = d.goldens {
            golden_command.get_or_insert(d.command);
            golden_groups
                .entry(g.paths.clone())
                .or_default()
                .push(Piece {
                    file: file.clone(),
                    shard,
                    part: g,
                });
        }
    }
    let mut scenarios = vec![];
    for pieces in scenario_groups.into_values() {
        let first = &pieces[0].part;
        let what = format!(
            "the scenarios under {} on pyspark {} (python {})",
            first.paths.join(", "),
            first.pyspark,
            first.python_version
        );
        let mut part = first.clone();
        // A matrix shard that had no cell of this env never built it: take a path that exists.
        if let Some(p) = pieces.iter().find(|p| !p.part.python.is_empty()) {
            part.python = p.part.python.clone();
        }
        part.entries = join(
            &what,
            "scenario",
            pieces.iter().map(|p| (p, p.part.total, &p.part.entries)),
        )?;
        scenarios.push(part);
    }
    let mut goldens = vec![];
    for pieces in golden_groups.into_values() {
        let first = &pieces[0].part;
        let what = format!("the goldens under {}", first.paths.join(", "));
        let mut part = first.clone();
        part.entries = join(
            &what,
            "golden",
            pieces.iter().map(|p| (p, p.part.total, &p.part.entries)),
        )?;
        goldens.push(part);
    }
    let run = |command: RunCommand, scenarios, goldens| RunDoc {
        command,
        shard: None,
        scenarios,
        goldens,
    };
    if scenarios.len() <= 1 && goldens.len() <= 1 {
        let command = match (scenarios.is_empty(), goldens.is_empty()) {
            (false, false) => RunCommand::Check,
            (false, true) => scenario_command.unwrap_or(RunCommand::Run),
            (true, false) => golden_command.unwrap_or(RunCommand::Replay),
            (true, true) => return Ok(vec![]),
        };
        return Ok(vec![run(command, scenarios.pop(), goldens.pop())]);
    }
    let mut runs: Vec<RunDoc> = scenarios
        .into_iter()
        .map(|s| run(scenario_command.unwrap_or(RunCommand::Run), Some(s), None))
        .collect();
    runs.extend(
        goldens
            .into_iter()
            .map(|g| run(RunCommand::Replay, None, Some(g))),
    );
    Ok(runs)
}

/// The entries of one group's pieces, checked to be the whole run: shards 1..N of one N, each
/// once, agreeing on the run's size, and together holding each of its items once.
fn join<'a, P: 'a>(
    what: &str,
    item: &str,
    pieces: impl Iterator<Item = (&'a Piece<P>, usize, &'a Vec<Entry>)>,
) -> Result<Vec<Entry>, BadInput> {
    let pieces: Vec<_> = pieces.collect();
    let (first, total, _) = pieces[0];
    let count = first.shard.count;
    let mut by_index: BTreeMap<usize, &Path> = BTreeMap::new();
    for (p, t, _) in &pieces {
        if p.shard.count != count {
            return Err(BadInput::msg(format!(
                "{what}: {} is shard {} but {} is shard {}: merge the shards of one split",
                first.file.display(),
                first.shard,
                p.file.display(),
                p.shard
            )));
        }
        if *t != total {
            return Err(BadInput::msg(format!(
                "{what}: {} counts {total} {item}(s) in the whole run, {} counts {t}: the shards ran different files",
                first.file.display(),
                p.file.display()
            )));
        }
        if let Some(other) = by_index.insert(p.shard.index, &p.file) {
            return Err(BadInput::msg(format!(
                "{what}: shard {} is given twice ({} and {})",
                p.shard,
                other.display(),
                p.file.display()
            )));
        }
    }
    if let Some(missing) = (1..=count).find(|i| !by_index.contains_key(i)) {
        let given: Vec<String> = by_index
            .iter()
            .map(|(i, f)| format!("{i}/{count} in {}", f.display()))
            .collect();
        return Err(BadInput::msg(format!(
            "{what}: shard {missing}/{count} is missing (given: {})",
            given.join(", ")
        )));
    }
    let mut seen: BTreeMap<usize, &Path> = BTreeMap::new();
    let mut entries = vec![];
    for (p, _, list) in &pieces {
        for e in list.iter() {
            let order = e.unit.order;
            if order >= total {
                return Err(BadInput::new(
                    &p.file,
                    format!("{item} #{order} is past the run's {total}"),
                ));
            }
            if let Some(other) = seen.insert(order, &p.file) {
                return Err(BadInput::msg(format!(
                    "{what}: {item} #{order} is in both {} and {}",
                    other.display(),
                    p.file.display()
                )));
            }
            entries.push(e.clone());
        }
    }
    if let Some(missing) = (0..total).find(|i| !seen.contains_key(i)) {
        return Err(BadInput::msg(format!(
            "{what}: {item} #{missing} of {total} is in no shard's report"
        )));
    }
    entries.sort_by_key(|e| e.unit.order);
    Ok(entries)
}
