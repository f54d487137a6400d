//! The compatibility table as one self-contained HTML page: no scripts, no external files, so it
//! can be attached to a CI run and opened anywhere. Each failing or N/A cell links to its verdict
//! text further down the page.

use super::table::{Cell, Table};
use std::fmt::Write as _;

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (a worker's stderr can hold any byte) are not valid HTML text.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em}\
table{border-collapse:collapse;font-size:13px}\
th,td{border:1px solid #bbb;padding:3px 6px;text-align:center;white-space:nowrap}\
td.name{text-align:left;font-family:monospace}\
td.pass{background:#c8ecc8}td.fail{background:#f4b6b6}td.na{background:#e4e4e4;color:#555}\
td.differs{outline:3px solid #1f5fbf;outline-offset:-3px}\
pre{background:#f6f6f6;border:1px solid #ddd;padding:8px;white-space:pre-wrap}";

/// `title` heads the page (the command that made it, say).
pub fn page(table: &Table, title: &str) -> String {
    let differs: std::collections::HashSet<(usize, usize)> =
        table.differences().into_iter().collect();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>fakejvm matrix</title><style>{STYLE}</style></head><body>\n\
         <h1>fakejvm compatibility matrix</h1>\n<p><code>{}</code></p>\n",
        esc(title)
    );
    let (pass, fail, na) = table.counts();
    let _ = writeln!(
        h,
        "<p id=\"summary\">{} scenarios &times; {} envs: {pass} PASS, {fail} FAIL, {na} N/A; \
         {} cell(s) differ from the first column (outlined).</p>",
        table.rows.len(),
        table.columns.len(),
        differs.len()
    );
    h.push_str("<table id=\"matrix\">\n<thead><tr><th>scenario</th>");
    for c in &table.columns {
        let _ = write!(
            h,
            "<th>pyspark {}<br>Python {}</th>",
            esc(&c.pyspark.to_string()),
            esc(&c.python.0)
        );
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for (r, row) in table.rows.iter().enumerate() {
        let _ = write!(h, "<tr><td class=\"name\">{}</td>", esc(&row.scenario));
        for (c, cell) in row.cells.iter().enumerate() {
            let class = match cell {
                Cell::Pass { .. } => "pass",
                Cell::Fail { .. } => "fail",
                Cell::NotApplicable { .. } | Cell::Elsewhere => "na",
            };
            let extra = if differs.contains(&(r, c)) {
                " differs"
            } else {
                ""
            };
            match cell {
                Cell::Pass { notes } if notes.is_empty() => {
                    let _ = write!(h, "<td class=\"{class}{extra}\">PASS</td>");
                }
                Cell::Elsewhere => {
                    let _ = write!(h, "<td class=\"{class}\">-</td>");
                }
                _ => {
                    let _ = write!(
                        h,
                        "<td class=\"{class}{extra}\"><a href=\"#v-{r}-{c}\">{}</a></td>",
                        esc(&cell.short())
                    );
                }
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n<h2>Verdicts</h2>\n");
    for (r, row) in table.rows.iter().enumerate() {
        for (c, cell) in row.cells.iter().enumerate() {
            let text = match cell {
                Cell::Pass { notes } if notes.is_empty() => continue,
                Cell::Elsewhere => continue,
                Cell::Pass { notes } => {
                    format!("passed, with known behaviour:\n{}", notes.join("\n"))
                }
                Cell::Fail { verdict, .. } => verdict.clone(),
                Cell::NotApplicable { why } => format!("not applicable: {why}"),
            };
            let _ = write!(
                h,
                "<h3 id=\"v-{r}-{c}\">{} on {}</h3>\n<pre>{}</pre>\n",
                esc(&row.scenario),
                esc(&table.columns[c].label()),
                esc(&text)
            );
        }
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::table::{Column, Row};
    use crate::matrix::versions::PythonMinor;

    #[test]
    fn escapes_and_links_every_non_passing_cell() {
        let t = Table {
            columns: vec![
                Column {
                    pyspark: "4.0.5".parse().unwrap(),
                    python: PythonMinor("3.11".into()),
                },
                Column {
                    pyspark: "4.1.4".parse().unwrap(),
                    python: PythonMinor("3.11".into()),
                },
            ],
            rows: vec![Row {
                scenario: "core/<x>.json".into(),
                cells: vec![
                    Cell::Pass { notes: vec![] },
                    Cell::Fail {
                        outcome: "Mismatch".into(),
                        verdict: "expected [1] got <2> \u{1}".into(),
                    },
                ],
            }],
        };
        let p = page(&t, "fakejvm matrix scenarios/core");
        assert!(p.contains("core/&lt;x&gt;.json"));
        assert!(p.contains("<a href=\"#v-0-1\">FAIL (Mismatch)</a>"));
        assert!(p.contains("<h3 id=\"v-0-1\">"));
        assert!(p.contains("got &lt;2&gt; \u{FFFD}"));
        assert!(p.contains("class=\"fail differs\""));
    }
}
