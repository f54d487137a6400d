//! A pyspark release number, and turning what a user typed ("4.1", "4.0.5") into one to install.

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
}
