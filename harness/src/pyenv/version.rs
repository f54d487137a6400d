//! A pyspark release number, and turning what a user typed ("4.1", "4.0.5") into one to install;
//! a CPython minor version ("3.12"), and which of them each pyspark line declares it runs on.

use super::{EnvError, PINNED};
use std::fmt;
use std::str::FromStr;

/// major.minor.patch of a pyspark release. Ordered, so version ranges compare naturally.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PysparkVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl PysparkVersion {
    /// "4.1" for 4.1.4: the protocol families change with the minor version.
    pub(crate) fn minor_line(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl FromStr for PysparkVersion {
    type Err = EnvError;

    /// "4.0.5"; pre-release and dev suffixes are ignored ("4.1.0.dev0", "4.1.0rc1" are 4.1.0),
    /// since a build from Spark's master reports such versions and speaks its release's protocol.
    fn from_str(text: &str) -> Result<Self, EnvError> {
        let bad = || EnvError::BadVersion {
            text: text.to_string(),
        };
        let mut parts = text.trim().split('.');
        let mut number = |whole: bool| -> Result<u32, EnvError> {
            let part = parts.next().ok_or_else(bad)?;
            let digits: &str = if whole {
                part
            } else {
                &part[..part
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(part.len())]
            };
            digits.parse().map_err(|_| bad())
        };
        Ok(PysparkVersion {
            major: number(true)?,
            minor: number(true)?,
            patch: number(false)?,
        })
    }
}

impl fmt::Display for PysparkVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The exact release to install for a request: "4.1" means the pinned 4.1.x; a full version is
/// taken as written (it also names a directory and a pip requirement, so only plain version
/// characters are accepted).
pub(super) fn release_for(request: &str) -> Result<String, EnvError> {
    let request = request.trim();
    let plain = !request.is_empty()
        && request
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.');
    if !plain {
        return Err(EnvError::BadVersion {
            text: request.to_string(),
        });
    }
    if request.parse::<PysparkVersion>().is_ok() {
        return Ok(request.to_string());
    }
    let line = format!("{request}.");
    match PINNED.iter().find(|pinned| pinned.starts_with(&line)) {
        Some(pinned) => Ok(pinned.to_string()),
        None => Err(EnvError::BadVersion {
            text: request.to_string(),
        }),
    }
}

/// Does an env's version satisfy a request? "4.1" accepts any 4.1.x, "4.1.4" only itself.
pub(super) fn satisfies(found: PysparkVersion, request: &str) -> bool {
    match request.parse::<PysparkVersion>() {
        Ok(wanted) => wanted == found,
        Err(_) => request.trim() == found.minor_line(),
    }
}

/// A CPython "MAJOR.MINOR": the half of an env's key that picks the base interpreter, and what
/// the JVM sends the worker (which refuses a different one).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PythonMinor {
    pub major: u32,
    pub minor: u32,
}

impl FromStr for PythonMinor {
    type Err = String;

    /// "3.12" only: a patch release is the interpreter's business, not the env's key.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a Python version: write MAJOR.MINOR, like 3.12");
        let (major, minor) = text.trim().split_once('.').ok_or_else(bad)?;
        let number = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 3 {
                Err(bad())
            } else {
                s.parse::<u32>().map_err(|_| bad())
            }
        };
        Ok(PythonMinor {
            major: number(major)?,
            minor: number(minor)?,
        })
    }
}

impl fmt::Display for PythonMinor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The CPythons each pyspark line declares, read from its released metadata (PKG-INFO of the
/// sdist on PyPI): the lowest is `Requires-Python` (pip and uv refuse to install below it), the
/// highest the newest `Programming Language :: Python :: 3.X` classifier. Read from 3.4.4, 3.5.0,
/// 3.5.9, 4.0.5, 4.1.4, 4.2.1 and 4.3.0; patch releases of a line are taken to declare the same
/// range (3.5.0 and 3.5.9 do).
const DECLARED_PYTHONS: &[(&str, PythonMinor, PythonMinor)] = &[
    ("3.4", py(3, 7), py(3, 11)),
    ("3.5", py(3, 8), py(3, 11)),
    ("4.0", py(3, 9), py(3, 13)),
    ("4.1", py(3, 10), py(3, 14)),
    ("4.2", py(3, 10), py(3, 14)),
    ("4.3", py(3, 11), py(3, 14)),
];

const fn py(major: u32, minor: u32) -> PythonMinor {
    PythonMinor { major, minor }
}

/// The oldest pyspark line fakejvm provisions: 3.4 is the first whose daemon and worker speak
/// the request layout of family A (and whose sdist still builds on current setuptools).
pub(super) const OLDEST_LINE: (u32, u32) = (3, 4);

/// Why pyspark `release` cannot run on Python `python`, if it cannot: the declared range of its
/// line (see `DECLARED_PYTHONS`). A line fakejvm has not read (newer than the table) is allowed:
/// pip then says no if it must.
pub fn unsupported_python(release: PysparkVersion, python: PythonMinor) -> Option<String> {
    let line = release.minor_line();
    let (_, low, high) = DECLARED_PYTHONS.iter().find(|(l, _, _)| *l == line)?;
    if python < *low {
        Some(format!(
            "pyspark {release} needs Python >={low} (its Requires-Python), not {python}"
        ))
    } else if python > *high {
        Some(format!(
            "pyspark {release} declares Python {low} to {high} (its classifiers), not {python}"
        ))
    } else {
        None
    }
}

/// The Pythons pyspark `release` declares, for messages ("3.9 to 3.13").
pub fn declared_pythons(release: PysparkVersion) -> Option<(PythonMinor, PythonMinor)> {
    let line = release.minor_line();
    DECLARED_PYTHONS
        .iter()
        .find(|(l, _, _)| *l == line)
        .map(|(_, low, high)| (*low, *high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_releases_and_ignores_suffixes() {
        let v = |s: &str| s.parse::<PysparkVersion>().unwrap();
        assert_eq!(
            v("4.0.5"),
            PysparkVersion {
                major: 4,
                minor: 0,
                patch: 5
            }
        );
        assert_eq!(
            v("4.1.0.dev0"),
            PysparkVersion {
                major: 4,
                minor: 1,
                patch: 0
            }
        );
        assert_eq!(v("4.1.0rc1").to_string(), "4.1.0");
        assert!(v("3.5.9") < v("4.0.5") && v("4.0.5") < v("4.0.10"));
        for bad in ["", "four", "4.1", "4.x.1", "4.1.rc1"] {
            assert!(
                bad.parse::<PysparkVersion>().is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn requests_resolve_to_pinned_releases() {
        assert_eq!(release_for("4.1").unwrap(), "4.1.4");
        assert_eq!(release_for("3.5").unwrap(), "3.5.9");
        assert_eq!(release_for("4.0.1").unwrap(), "4.0.1");
        let err = release_for("4.9").unwrap_err().to_string();
        assert!(err.contains("4.9") && err.contains("4.0.5"), "{err}");
        assert!(release_for("../4.0.5").is_err() && release_for("4.0.5 ").is_ok());
        assert!(
            satisfies("4.1.4".parse().unwrap(), "4.1")
                && !satisfies("4.1.4".parse().unwrap(), "4.1.3")
        );
    }

    #[test]
    fn python_versions_are_major_minor_only() {
        assert_eq!("3.12".parse::<PythonMinor>().unwrap(), py(3, 12));
        assert!(py(3, 9) < py(3, 10) && py(2, 7) < py(3, 7));
        for bad in ["", "3", "3.12.1", "three.x", "3.-1", "3.1a"] {
            let err = bad.parse::<PythonMinor>().unwrap_err();
            assert!(err.contains("MAJOR.MINOR"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn each_line_runs_on_its_declared_pythons_only() {
        let v = |s: &str| s.parse::<PysparkVersion>().unwrap();
        assert_eq!(unsupported_python(v("4.0.5"), py(3, 11)), None);
        assert_eq!(unsupported_python(v("3.5.0"), py(3, 8)), None);
        let low = unsupported_python(v("4.0.5"), py(3, 8)).unwrap();
        assert!(
            low.contains(">=3.9") && low.contains("Requires-Python"),
            "{low}"
        );
        let high = unsupported_python(v("3.4.4"), py(3, 13)).unwrap();
        assert!(
            high.contains("3.7 to 3.11") && high.contains("not 3.13"),
            "{high}"
        );
        assert!(unsupported_python(v("4.0.0"), py(2, 7)).is_some());
        assert_eq!(
            unsupported_python(v("9.9.0"), py(3, 99)),
            None,
            "an unread line"
        );
    }
}
