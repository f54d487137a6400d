//! Which (pyspark, Python) cells a matrix has: what the user typed (`3.5.0..3.5.9,4.0.*,4.1.4`,
//! `3.11,3.12`), resolved against the pyspark releases pip knows.

use crate::pyenv::PysparkVersion;
use std::collections::BTreeSet;

/// One item of `--pyspark`: an exact release, an inclusive range, or a line glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionItem {
    Exact(PysparkVersion),
    /// `A..B`, both ends included.
    Range(PysparkVersion, PysparkVersion),
    /// `4.0.*`: every release of the 4.0 line.
    Line {
        major: u32,
        minor: u32,
    },
}

/// `--pyspark` as typed, parsed (not yet resolved against the releases).
pub fn parse_pyspark_spec(text: &str) -> Result<Vec<VersionItem>, String> {
    let mut items = vec![];
    for raw in text.split(',') {
        let item = raw.trim();
        if item.is_empty() {
            return Err(format!("--pyspark {text:?}: an empty item between commas"));
        }
        let exact = |s: &str| -> Result<PysparkVersion, String> {
            let v: PysparkVersion = s
                .parse()
                .map_err(|_| format!("--pyspark: {s:?} is not a release like 4.0.5"))?;
            if v.to_string() != s {
                return Err(format!(
                    "--pyspark: {s:?} is not a plain release like 4.0.5"
                ));
            }
            Ok(v)
        };
        if let Some((a, b)) = item.split_once("..") {
            let (a, b) = (exact(a.trim())?, exact(b.trim())?);
            if a > b {
                return Err(format!("--pyspark: the range {item} runs backwards"));
            }
            items.push(VersionItem::Range(a, b));
        } else if let Some(line) = item.strip_suffix(".*") {
            let mut parts = line.split('.');
            let num = |p: Option<&str>| p.and_then(|p| p.parse::<u32>().ok());
            match (num(parts.next()), num(parts.next()), parts.next()) {
                (Some(major), Some(minor), None) => items.push(VersionItem::Line { major, minor }),
                _ => return Err(format!("--pyspark: {item:?} is not a line glob like 4.0.*")),
            }
        } else {
            items.push(VersionItem::Exact(exact(item)?));
        }
    }
    Ok(items)
}

/// The releases a spec names, in version order, each once. A range or glob that matches nothing,
/// or an exact release pip does not know, is an error naming it.
pub fn resolve(
    items: &[VersionItem],
    known: &BTreeSet<PysparkVersion>,
) -> Result<Vec<PysparkVersion>, String> {
    let mut out = BTreeSet::new();
    for item in items {
        let hits: Vec<PysparkVersion> = match item {
            VersionItem::Exact(v) => known.iter().filter(|k| *k == v).copied().collect(),
            VersionItem::Range(a, b) => known.range(*a..=*b).copied().collect(),
            VersionItem::Line { major, minor } => known
                .iter()
                .filter(|k| k.major == *major && k.minor == *minor)
                .copied()
                .collect(),
        };
        if hits.is_empty() {
            return Err(format!(
                "--pyspark: no pyspark release on the package index matches {}",
                item_text(item)
            ));
        }
        out.extend(hits);
    }
    Ok(out.into_iter().collect())
}

fn item_text(item: &VersionItem) -> String {
    match item {
        VersionItem::Exact(v) => v.to_string(),
        VersionItem::Range(a, b) => format!("{a}..{b}"),
        VersionItem::Line { major, minor } => format!("{major}.{minor}.*"),
    }
}

/// A CPython `major.minor` as `--python` names it ("3.12").
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PythonMinor(pub String);

pub fn parse_python_spec(text: &str) -> Result<Vec<PythonMinor>, String> {
    let mut out: Vec<PythonMinor> = vec![];
    for raw in text.split(',') {
        let item = raw.trim();
        let ok = matches!(item.split_once('.'), Some((a, b))
            if a == "3" && !b.is_empty() && b.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(format!(
                "--python {text:?}: {item:?} is not a CPython version like 3.12"
            ));
        }
        let p = PythonMinor(item.to_string());
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The releases in the "Available versions: 4.3.0, 4.2.1, ..." line `pip index versions`
/// prints; pre-releases and post-releases (2.2.0.post0) are left out, as a matrix means releases.
pub fn parse_pip_index(stdout: &str) -> Option<BTreeSet<PysparkVersion>> {
    let line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Available versions:"))?;
    Some(
        line.split(',')
            .map(str::trim)
            .filter_map(|v| {
                let parsed: PysparkVersion = v.parse().ok()?;
                (parsed.to_string() == v).then_some(parsed)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> PysparkVersion {
        s.parse().unwrap()
    }

    fn known() -> BTreeSet<PysparkVersion> {
        parse_pip_index(
            "pyspark (4.3.0)\nAvailable versions: 4.3.0, 4.2.1, 4.2.0, 4.1.4, 4.1.0, 4.0.5, 4.0.4, \
             4.0.0, 3.5.9, 3.5.1, 3.5.0, 3.4.4, 2.2.0.post0\n",
        )
        .unwrap()
    }

    #[test]
    fn pip_index_line_gives_plain_releases() {
        let k = known();
        assert!(k.contains(&v("4.0.5")));
        assert_eq!(k.len(), 12, "2.2.0.post0 is not a plain release");
        assert_eq!(parse_pip_index("ERROR: no matching distribution"), None);
    }

    #[test]
    fn ranges_globs_and_exacts_resolve_in_order_once() {
        let items = parse_pyspark_spec("3.5.0..3.5.9,4.0.*, 4.1.4,4.0.5").unwrap();
        let got: Vec<String> = resolve(&items, &known())
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(
            got,
            ["3.5.0", "3.5.1", "3.5.9", "4.0.0", "4.0.4", "4.0.5", "4.1.4"]
        );
    }

    #[test]
    fn bad_specs_say_which_item() {
        for (spec, needle) in [
            ("4.0", "not a release like"),
            ("4.0.5rc1", "not a plain release"),
            ("4.0.x", "not a release"),
            ("4.0.5..4.0.0", "backwards"),
            ("4.*", "line glob"),
            ("4.0.5,,4.1.4", "empty item"),
        ] {
            let e = parse_pyspark_spec(spec).unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
        }
        let e = resolve(&parse_pyspark_spec("4.0.9").unwrap(), &known()).unwrap_err();
        assert!(e.contains("4.0.9"), "{e}");
        let e = resolve(&parse_pyspark_spec("3.9.*").unwrap(), &known()).unwrap_err();
        assert!(e.contains("3.9.*"), "{e}");
    }

    #[test]
    fn python_spec() {
        assert_eq!(
            parse_python_spec("3.11,3.12,3.11").unwrap(),
            [PythonMinor("3.11".into()), PythonMinor("3.12".into())]
        );
        assert!(parse_python_spec("3").is_err());
        assert!(parse_python_spec("2.7x").is_err());
    }
}
