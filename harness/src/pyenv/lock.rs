//! An env's lock: every distribution installed in it, with its exact version and the sha256 of
//! each archive it may come from, as a pip requirements file that both pip and uv install as it
//! is (`--require-hashes --no-deps`), so rebuilding from a lock installs exactly it or fails.
//!
//! The first line names the env it is for: `# fakejvm-lock pyspark=4.0.5 python=3.11 env=full`.
//! Every env records its lock (`fakejvm-lock.txt` in the env), and the pinned envs `cargo test`
//! uses are built from the locks committed under `harness/locks/` (`ci/update-locks` makes them).

use super::version::{PysparkVersion, PythonMinor};
use super::Flavor;
use std::collections::BTreeMap;

const TAG: &str = "# fakejvm-lock ";

macro_rules! committed {
    ($name:literal) => {
        ($name, include_str!(concat!("../../locks/", $name, ".txt")))
    };
}

/// The committed locks, by env name (`pyspark-4.0.5-py3.11`, `...-lean`): embedded, so the
/// binary builds the same pinned envs from any directory.
const COMMITTED: &[(&str, &str)] = &[
    committed!("pyspark-4.0.5-py3.11"),
    committed!("pyspark-4.0.5-py3.11-lean"),
    committed!("pyspark-4.1.4-py3.11"),
    committed!("pyspark-4.1.4-py3.11-lean"),
    committed!("pyspark-4.2.1-py3.11"),
    committed!("pyspark-4.2.1-py3.11-lean"),
    committed!("pyspark-4.3.0-py3.11"),
    committed!("pyspark-4.3.0-py3.11-lean"),
    committed!("pyspark-3.5.9-py3.11"),
    committed!("pyspark-3.5.9-py3.11-lean"),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub pyspark: PysparkVersion,
    pub python: PythonMinor,
    pub flavor: Flavor,
    /// Normalised name -> (version, hashes "sha256:...").
    pub dists: BTreeMap<String, (String, Vec<String>)>,
}

/// PEP 503's normal form, so "PyArrow", "py_arrow" and "py.arrow" are one name.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

impl Lock {
    /// The env directory name this lock builds (`pyspark-4.0.5-py3.11[-lean]`).
    pub fn env_name(&self) -> String {
        super::env_name(
            &self.pyspark.to_string(),
            &self.python.to_string(),
            self.flavor,
        )
    }

    /// name -> version, to compare with what an env has installed.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.dists
            .iter()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect()
    }

    pub fn parse(text: &str) -> Result<Lock, String> {
        let head = text.lines().next().unwrap_or("");
        let tags = head.strip_prefix(TAG).ok_or_else(|| {
            format!("line 1: not a fakejvm lock (it must begin {TAG:?}pyspark=X.Y.Z python=3.X env=full|lean)")
        })?;
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for kv in tags.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("line 1: {kv:?} is not KEY=VALUE"))?;
            fields.insert(k, v);
        }
        let field = |k: &str| {
            fields
                .get(k)
                .copied()
                .ok_or_else(|| format!("line 1: no {k}="))
        };
        let pyspark: PysparkVersion = field("pyspark")?
            .parse()
            .map_err(|e| format!("line 1: {e}"))?;
        let python: PythonMinor = field("python")?
            .parse()
            .map_err(|e| format!("line 1: {e}"))?;
        let flavor = match field("env")? {
            "full" => Flavor::Full,
            "lean" => Flavor::Lean,
            other => return Err(format!("line 1: env={other}: write full or lean")),
        };
        let mut dists = BTreeMap::new();
        for (at, req) in logical_lines(text) {
            let mut words = req.split_whitespace();
            let pin = words.next().unwrap_or_default();
            let (name, version) = pin.split_once("==").ok_or_else(|| {
                format!("line {at}: {pin:?} is not pinned: every line is NAME==VERSION --hash=sha256:...")
            })?;
            let valid = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.+!".contains(c))
            };
            if !valid(name) || !valid(version) {
                return Err(format!("line {at}: {pin:?} is not NAME==VERSION"));
            }
            let mut hashes = vec![];
            for w in words {
                let h = w.strip_prefix("--hash=").ok_or_else(|| {
                    format!("line {at}: {w:?}: only --hash=sha256:... may follow a pin")
                })?;
                let hex = h
                    .strip_prefix("sha256:")
                    .ok_or_else(|| format!("line {at}: {h:?} is not a sha256 hash"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("line {at}: {h:?} is not a sha256 hash"));
                }
                hashes.push(h.to_string());
            }
            if hashes.is_empty() {
                return Err(format!(
                    "line {at}: {name}=={version} has no --hash: a lock pins the archive too"
                ));
            }
            if dists
                .insert(normalize(name), (version.to_string(), hashes))
                .is_some()
            {
                return Err(format!("line {at}: {name} is pinned twice"));
            }
        }
        match dists.get("pyspark") {
            Some((v, _)) if *v == pyspark.to_string() => {}
            Some((v, _)) => {
                return Err(format!(
                    "it pins pyspark=={v} but line 1 says pyspark={pyspark}"
                ))
            }
            None => return Err("it pins no pyspark".into()),
        }
        Ok(Lock {
            pyspark,
            python,
            flavor,
            dists,
        })
    }

    /// The file: the tag line, how it was made, then one requirement per distribution (sorted).
    pub fn to_text(&self, made_by: &str) -> String {
        let mut out = format!(
            "{TAG}pyspark={} python={} env={}\n# {made_by}\n# Rebuild this env exactly: fakejvm env setup --locked THIS_FILE\n",
            self.pyspark, self.python, self.flavor
        );
        for (name, (version, hashes)) in &self.dists {
            out.push_str(&format!("{name}=={version}"));
            for h in hashes {
                out.push_str(&format!(" \\\n    --hash={h}"));
            }
            out.push('\n');
        }
        out
    }
}

/// Requirement lines with `\` continuations joined and comments dropped, with the line number
/// each begins on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = vec![];
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = match raw.find(" #") {
            Some(at) => &raw[..at],
            None if raw.trim_start().starts_with('#') => "",
            None => raw,
        };
        let (body, continues) = match line.trim_end().strip_suffix('\\') {
            Some(b) => (b, true),
            None => (line, false),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        entry.1.push(' ');
        entry.1.push_str(body.trim());
        if !continues {
            let (at, text) = current.take().expect("just set");
            if !text.trim().is_empty() {
                out.push((at, text.trim().to_string()));
            }
        }
    }
    if let Some((at, text)) = current {
        if !text.trim().is_empty() {
            out.push((at, text.trim().to_string()));
        }
    }
    out
}

/// The committed lock for env `name`, if the repo ships one.
pub fn committed(name: &str) -> Option<Lock> {
    COMMITTED.iter().find(|(n, _)| *n == name).map(|(n, text)| {
        Lock::parse(text)
            .unwrap_or_else(|e| panic!("the committed lock harness/locks/{n}.txt: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
    const H2: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000ff";

    #[test]
    fn a_lock_reads_back_what_it_writes() {
        let text = format!(
            "{TAG}pyspark=4.0.5 python=3.11 env=lean\n# made by hand\nPy4J==0.10.9.9 \\\n    --hash={H1} \\\n    --hash={H2}\n    # via pyspark\npyspark==4.0.5 --hash={H1}  # the one\n"
        );
        let lock = Lock::parse(&text).unwrap();
        assert_eq!(lock.env_name(), "pyspark-4.0.5-py3.11-lean");
        assert_eq!(
            lock.dists["py4j"],
            ("0.10.9.9".to_string(), vec![H1.to_string(), H2.to_string()])
        );
        let again = Lock::parse(&lock.to_text("test")).unwrap();
        assert_eq!(again, lock);
    }

    #[test]
    fn a_bad_lock_says_which_line() {
        let head = format!("{TAG}pyspark=4.0.5 python=3.11 env=full\n");
        for (body, problem) in [
            ("pyspark>=4.0\n", "line 2: \"pyspark>=4.0\" is not pinned"),
            ("pyspark==4.0.5\n", "line 2: pyspark==4.0.5 has no --hash"),
            ("pyspark==4.0.5 --hash=md5:00\n", "is not a sha256 hash"),
            ("pyspark==4.0.5 -e .\n", "only --hash"),
            ("numpy==2.4.6 \\\n --hash=sha256:00\n", "line 2"),
        ] {
            let err = Lock::parse(&format!("{head}{body}")).unwrap_err();
            assert!(err.contains(problem), "{body:?}: {err}");
        }
        let err = Lock::parse(&format!("{head}pandas==2.3.3 --hash={H1}\n")).unwrap_err();
        assert!(err.contains("no pyspark"), "{err}");
        let err = Lock::parse("numpy==1\n").unwrap_err();
        assert!(err.contains("line 1: not a fakejvm lock"), "{err}");
    }

    #[test]
    fn names_are_compared_in_normal_form() {
        assert_eq!(normalize("Python_Dateutil"), "python-dateutil");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert_eq!(normalize("a__b-.c"), "a-b-c");
    }

    /// `cargo test` uses one pinned release per family on 3.11: each comes from a committed lock.
    #[test]
    fn every_pinned_release_has_a_committed_lock_of_each_flavor() {
        for v in super::super::PINNED {
            for flavor in [Flavor::Full, Flavor::Lean] {
                let name = super::super::env_name(v, "3.11", flavor);
                let lock = committed(&name)
                    .unwrap_or_else(|| panic!("no harness/locks/{name}.txt: run ci/update-locks"));
                assert_eq!(lock.pyspark.to_string(), *v);
                if flavor == Flavor::Lean {
                    let names: Vec<&String> = lock.dists.keys().collect();
                    assert_eq!(names, ["py4j", "pyspark"], "{name}");
                }
            }
        }
    }

    #[test]
    fn every_committed_lock_parses_and_is_named_for_its_env() {
        for (name, text) in COMMITTED {
            let lock = Lock::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(lock.env_name(), *name);
        }
    }
}
