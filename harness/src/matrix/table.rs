//! The compatibility table: one row per scenario, one column per (pyspark, Python), each cell
//! the scenario's verdict in that env, and which cells differ from the first column.

use super::versions::PythonMinor;
use crate::pyenv::PysparkVersion;
use crate::report;
use crate::scenario::{ScenarioReport, Status};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct Column {
    pub pyspark: PysparkVersion,
    pub python: PythonMinor,
}

impl Column {
    pub fn label(&self) -> String {
        format!("{}/py{}", self.pyspark, self.python.0)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "cell", rename_all = "snake_case")]
pub enum Cell {
    /// `notes`: the known, version-specific behaviours (`expect_by_version`) that made it pass;
    /// such a cell prints as PASS* so a version's difference is never hidden by its expectation.
    Pass {
        notes: Vec<String>,
    },
    /// `outcome` names what failed first: an outcome kind (`Hang`, `Mismatch`...) for a task,
    /// `fault`, `stderr` or `leak` when every task was right but the scenario still failed.
    Fail {
        outcome: String,
        verdict: String,
    },
    NotApplicable {
        why: String,
    },
    /// Another shard's cell (`--shard`): `report merge` fills it in.
    Elsewhere,
}

impl Cell {
    /// PASS, FAIL (Hang), N/A: what the table prints.
    pub fn short(&self) -> String {
        match self {
            Cell::Pass { notes } if notes.is_empty() => "PASS".into(),
            Cell::Pass { .. } => "PASS*".into(),
            Cell::Fail { outcome, .. } => format!("FAIL ({outcome})"),
            Cell::NotApplicable { .. } => "N/A".into(),
            Cell::Elsewhere => "-".into(),
        }
    }

    /// Two cells "differ" when their short forms do: a different failure is a difference, the
    /// same failure in other words is not.
    fn same_as(&self, other: &Cell) -> bool {
        self.short() == other.short()
    }

    /// The cells of one file's runs (one per worker module of `worker_module.each_in`) as one:
    /// the first failure, else PASS with every note, else N/A.
    pub fn all(cells: Vec<Cell>) -> Cell {
        if cells.len() == 1 {
            return cells.into_iter().next().expect("one cell");
        }
        if let Some(fail) = cells.iter().find(|c| matches!(c, Cell::Fail { .. })) {
            return fail.clone();
        }
        let mut notes = vec![];
        let mut passed = false;
        for c in &cells {
            if let Cell::Pass { notes: n } = c {
                passed = true;
                notes.extend(n.iter().cloned());
            }
        }
        if passed {
            return Cell::Pass { notes };
        }
        cells.into_iter().next().unwrap_or(Cell::NotApplicable {
            why: "no run".into(),
        })
    }

    pub fn of(r: &ScenarioReport) -> Cell {
        match &r.status {
            Status::Passed => Cell::Pass {
                notes: r
                    .tasks
                    .iter()
                    .filter_map(|t| t.note.as_ref().map(|n| format!("task {}: {n}", t.index)))
                    .chain(r.notes.iter().cloned())
                    .collect(),
            },
            Status::NotApplicable { why } => Cell::NotApplicable { why: why.clone() },
            Status::Failed => {
                let outcome = if let Some(t) = r.tasks.iter().find(|t| !t.ok) {
                    if t.stderr_unmet.is_empty() {
                        format!("{:?}", t.outcome.kind())
                    } else {
                        "stderr".into()
                    }
                } else if !r.stderr_unmet.is_empty() {
                    "stderr".into()
                } else if !r.leftovers.is_empty() {
                    "leak".into()
                } else {
                    "fault".into()
                };
                Cell::Fail {
                    outcome,
                    verdict: report::scenario_lines(r),
                }
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The scenario file, as given on the command line.
    pub scenario: String,
    pub cells: Vec<Cell>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

impl Table {
    /// `scenarios` fixes the row order; each column's cells are keyed by row. A row a column
    /// has no cell for (a shard that did not run it) is N/A, saying so.
    pub fn build(scenarios: &[String], columns: Vec<(Column, BTreeMap<usize, Cell>)>) -> Table {
        let mut rows: Vec<Row> = scenarios
            .iter()
            .map(|s| Row {
                scenario: s.clone(),
                cells: vec![],
            })
            .collect();
        let mut cols = vec![];
        for (col, mut cells) in columns {
            for (r, row) in rows.iter_mut().enumerate() {
                row.cells.push(cells.remove(&r).unwrap_or(Cell::Elsewhere));
            }
            cols.push(col);
        }
        Table {
            columns: cols,
            rows,
        }
    }

    /// (row, column) of every cell that differs from the same row's first column.
    pub fn differences(&self) -> Vec<(usize, usize)> {
        let mut out = vec![];
        for (r, row) in self.rows.iter().enumerate() {
            let Some(first) = row.cells.first() else {
                continue;
            };
            for (c, cell) in row.cells.iter().enumerate().skip(1) {
                let elsewhere = matches!(cell, Cell::Elsewhere) || matches!(first, Cell::Elsewhere);
                if !elsewhere && !cell.same_as(first) {
                    out.push((r, c));
                }
            }
        }
        out
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        let mut n = (0, 0, 0);
        for cell in self.rows.iter().flat_map(|r| &r.cells) {
            match cell {
                Cell::Pass { .. } => n.0 += 1,
                Cell::Fail { .. } => n.1 += 1,
                Cell::NotApplicable { .. } => n.2 += 1,
                Cell::Elsewhere => {}
            }
        }
        n
    }

    /// `cols` (ascending) as labels, each run of three or more neighbours in `shown` (the
    /// columns not N/A throughout) written `first .. last (n envs)`.
    fn column_runs(&self, cols: &[usize], shown: &[usize]) -> String {
        let pos = |c: usize| shown.iter().position(|&s| s == c);
        let mut runs: Vec<Vec<usize>> = vec![];
        for &c in cols {
            match runs.last_mut() {
                Some(run)
                    if pos(c)
                        .zip(run.last().and_then(|&l| pos(l)))
                        .is_some_and(|(p, q)| p == q + 1) =>
                {
                    run.push(c)
                }
                _ => runs.push(vec![c]),
            }
        }
        let label = |c: usize| self.columns[c].label();
        runs.iter()
            .map(|run| match run.as_slice() {
                [a, .., b] if run.len() >= 3 => {
                    format!("{} .. {} ({} envs)", label(*a), label(*b), run.len())
                }
                _ => run.iter().map(|&c| label(c)).collect::<Vec<_>>().join(", "),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The table as text: a header of pyspark versions over Python versions, a row per scenario,
    /// then the cells that differ from the first column, with what they hold.
    pub fn to_text(&self) -> String {
        let name_w = self
            .rows
            .iter()
            .map(|r| r.scenario.chars().count())
            .max()
            .unwrap_or(8)
            .max("scenario".len());
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|c| {
                let head = self.columns[c].pyspark.to_string().len();
                self.rows
                    .iter()
                    .map(|r| r.cells[c].short().len())
                    .max()
                    .unwrap_or(0)
                    .max(head)
                    .max(self.columns[c].python.0.len() + 2)
            })
            .collect();
        let mut out = String::new();
        let line = |first: &str, cells: Vec<String>| -> String {
            let mut l = format!("{first:<name_w$}");
            for (c, text) in cells.into_iter().enumerate() {
                let _ = write!(l, "  {text:<w$}", w = widths[c]);
            }
            l.trim_end().to_string()
        };
        out.push_str(&line(
            "pyspark",
            self.columns.iter().map(|c| c.pyspark.to_string()).collect(),
        ));
        out.push('\n');
        out.push_str(&line(
            "python",
            self.columns
                .iter()
                .map(|c| format!("py{}", c.python.0))
                .collect(),
        ));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(
                &row.scenario,
                row.cells.iter().map(Cell::short).collect(),
            ));
            out.push('\n');
        }
        let (pass, fail, na) = self.counts();
        let _ = writeln!(
            out,
            "{} scenarios x {} envs: {pass} PASS, {fail} FAIL, {na} N/A",
            self.rows.len(),
            self.columns.len()
        );
        let diffs = self.differences();
        match self.columns.first() {
            Some(first) if !diffs.is_empty() => {
                let _ = writeln!(
                    out,
                    "{} cell(s) differ from the first column ({}):",
                    diffs.len(),
                    first.label()
                );
                // A column that is N/A throughout for one reason (an env that cannot exist) is
                // one line, not one per scenario.
                let whole_na = |c: usize| -> Option<&str> {
                    let mut why = None;
                    for row in &self.rows {
                        match &row.cells[c] {
                            Cell::NotApplicable { why: w } if why.is_none_or(|x| x == w) => {
                                why = Some(w)
                            }
                            _ => return None,
                        }
                    }
                    why.map(String::as_str)
                };
                let mut said = std::collections::BTreeSet::new();
                // The same difference in many envs of one row (a feature from some release on)
                // is one line naming the envs, a run of neighbouring columns as `A .. B`.
                let mut lines: Vec<(usize, String, Vec<usize>)> = vec![];
                for (r, c) in diffs {
                    if let Some(why) = whole_na(c) {
                        if said.insert(c) {
                            let _ = writeln!(
                                out,
                                "  {}: every cell N/A: {why}",
                                self.columns[c].label()
                            );
                        }
                        continue;
                    }
                    let row = &self.rows[r];
                    let detail = match &row.cells[c] {
                        Cell::NotApplicable { why } => format!(": {why}"),
                        Cell::Pass { notes } if !notes.is_empty() => {
                            format!(": known behaviour, {}", notes.join("; "))
                        }
                        _ => String::new(),
                    };
                    let what = format!(
                        "{} (first column: {}){detail}",
                        row.cells[c].short(),
                        row.cells[0].short()
                    );
                    match lines.iter_mut().find(|(lr, lw, _)| *lr == r && *lw == what) {
                        Some((_, _, cols)) => cols.push(c),
                        None => lines.push((r, what, vec![c])),
                    }
                }
                let shown: Vec<usize> = (0..self.columns.len())
                    .filter(|&c| whole_na(c).is_none())
                    .collect();
                for (r, what, cols) in lines {
                    let _ = writeln!(
                        out,
                        "  {} on {}: {what}",
                        self.rows[r].scenario,
                        self.column_runs(&cols, &shown)
                    );
                }
            }
            Some(first) => {
                let _ = writeln!(
                    out,
                    "no cell differs from the first column ({})",
                    first.label()
                );
            }
            None => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(v: &str, p: &str) -> Column {
        Column {
            pyspark: v.parse().unwrap(),
            python: PythonMinor(p.into()),
        }
    }

    fn table() -> Table {
        Table {
            columns: vec![
                col("4.0.5", "3.11"),
                col("4.1.4", "3.11"),
                col("4.1.4", "3.8"),
            ],
            rows: vec![
                Row {
                    scenario: "core/a.json".into(),
                    cells: vec![
                        Cell::Pass { notes: vec![] },
                        Cell::Pass { notes: vec![] },
                        Cell::NotApplicable {
                            why: "no 3.8".into(),
                        },
                    ],
                },
                Row {
                    scenario: "core/b.json".into(),
                    cells: vec![
                        Cell::Pass { notes: vec![] },
                        Cell::Fail {
                            outcome: "Hang".into(),
                            verdict: "FAIL core/b.json".into(),
                        },
                        Cell::Pass { notes: vec![] },
                    ],
                },
            ],
        }
    }

    #[test]
    fn differences_are_against_the_first_column() {
        assert_eq!(table().differences(), [(0, 2), (1, 1)]);
        assert_eq!(table().counts(), (4, 1, 1));
    }

    #[test]
    fn text_has_a_row_per_scenario_and_names_the_differences() {
        let text = table().to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("pyspark") && lines[0].contains("4.1.4"),
            "{text}"
        );
        assert!(
            lines[1].contains("py3.11") && lines[1].contains("py3.8"),
            "{text}"
        );
        assert!(lines[3].contains("FAIL (Hang)"), "{text}");
        assert!(
            text.contains("2 cell(s) differ from the first column (4.0.5/py3.11)"),
            "{text}"
        );
        assert!(text.contains("core/a.json on 4.1.4/py3.8: N/A (first column: PASS): no 3.8"));
    }

    #[test]
    fn one_difference_in_neighbouring_envs_is_one_line_with_a_range() {
        let columns: Vec<Column> = ["3.5.9", "4.0.5", "4.1.0", "4.1.4", "4.2.1"]
            .iter()
            .map(|v| col(v, "3.11"))
            .collect();
        let na = Cell::NotApplicable { why: "4.1+".into() };
        let pass = Cell::Pass { notes: vec![] };
        let t = Table {
            columns,
            rows: vec![Row {
                scenario: "core/uds.json".into(),
                cells: vec![na.clone(), na, pass.clone(), pass.clone(), pass],
            }],
        };
        let text = t.to_text();
        assert!(
            text.contains(
                "core/uds.json on 4.1.0/py3.11 .. 4.2.1/py3.11 (3 envs): PASS (first column: N/A)"
            ),
            "{text}"
        );
    }
}
