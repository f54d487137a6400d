//! Changed goldens are reviewed, not rewritten (the pending/review/accept flow of insta).
//!
//! `replay --bless` never touches a golden: it stages the live replies beside the recorded ones,
//!
//! ```text
//! golden/<name>/
//!   c0.reply.bin.new      the live reply bytes of each changed connection
//!   c0.reply.txt.new      their decoded text
//!   index.json.new        the index as it will be (reply spans, `blessed` time)
//!   pending.diff.txt      what changed: frame by frame, then the decoded reply text as a line diff
//!   pending.json          the manifest, written last: which files, against which index.json
//! ```
//!
//! `replay --review` prints the diffs, `--accept` moves the files in and `--reject` drops them.
//! Accepting never leaves a golden that cannot be loaded, whatever step fails: the index is the
//! only thing that names files, so it is switched first to the staged `.new` files (one atomic
//! rename), then each staged file is copied over its final name (atomically, and no longer
//! named by the index), then `index.json.new` is renamed over the index (last), and only then
//! are the staged files removed. A failed accept is finished by running it again.

use super::format::{self, Golden, Index};
use super::replay::Difference;
use super::write_atomic;
use crate::error::BadInput;
use crate::protocol::{Dialect, Reply};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Appended to the name of each staged file.
pub(crate) const NEW_SUFFIX: &str = ".new";
pub const DIFF_FILE: &str = "pending.diff.txt";
pub const MANIFEST: &str = "pending.json";
const MANIFEST_FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    /// UTC, RFC 3339.
    blessed_at: String,
    /// The index.json the change was made against: if it changed since, the change is stale.
    base_index_sha256: String,
    /// index.json.new as staged.
    new_index_sha256: String,
    connections: Vec<String>,
    /// Files of the golden (names the index uses), each staged as `<file>.new`.
    files: Vec<String>,
}

/// The live replies that replace one connection's recorded ones.
pub struct NewReply {
    pub conn: String,
    /// The raw reply stream (after the handshake), as the golden's reply file holds it.
    pub bytes: Vec<u8>,
    /// `bytes` decoded: the task replies, then the answer to the close, if any.
    pub replies: Vec<Reply>,
    /// How many of `replies` answer tasks.
    pub tasks: usize,
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn staged(file: &str) -> String {
    format!("{file}{NEW_SUFFIX}")
}

/// The pending files in a golden folder (staged files, diff, manifest), sorted by name.
pub fn pending(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(NEW_SUFFIX) || n == DIFF_FILE || n == MANIFEST)
        .collect();
    out.sort();
    out
}

/// An accept that stopped after switching the index to the staged files: only --accept may
/// go on from there (dropping those files would leave the index naming missing files).
fn accept_interrupted(dir: &Path) -> bool {
    Golden::load(dir).is_ok_and(|g| {
        g.index.connections.iter().any(|c| {
            [&c.reply, &c.reply_text]
                .iter()
                .any(|f| f.ends_with(NEW_SUFFIX))
        })
    })
}

/// Stage the changed connections of `golden` as pending files, replacing any pending files an
/// earlier --bless left. The golden itself is not touched.
pub fn stage(
    golden: &Golden,
    changes: &[NewReply],
    differences: &[Difference],
) -> anyhow::Result<Vec<String>> {
    let dir = &golden.dir;
    discard(dir)?;
    let dialect = golden.index.dialect;
    let base = std::fs::read(dir.join(format::INDEX))?;
    let mut index = golden.index.clone();
    let now = format::utc_now();
    let mut files = vec![];
    let mut text_diffs = String::new();
    for ch in changes {
        let entry = index
            .connections
            .iter_mut()
            .find(|c| c.id == ch.conn)
            .ok_or_else(|| anyhow::anyhow!("no connection {} in the index", ch.conn))?;
        let old_text = old_reply_text(golden, dialect, &entry.reply);
        let new_text = super::record::reply_text(dialect, &ch.replies)?;
        write_atomic(&dir.join(staged(&entry.reply)), &ch.bytes)?;
        write_atomic(&dir.join(staged(&entry.reply_text)), new_text.as_bytes())?;
        entry.reply_spans = ch
            .replies
            .iter()
            .take(ch.tasks)
            .map(|r| [r.start, r.end_offset])
            .collect();
        entry.after_close = ch.replies.get(ch.tasks).map(|r| [r.start, r.end_offset]);
        entry.blessed = Some(now.clone());
        files.push(entry.reply.clone());
        files.push(entry.reply_text.clone());
        text_diffs.push_str(&format!(
            "--- {} (golden)\n+++ {} (live)\n",
            entry.reply_text,
            staged(&entry.reply_text)
        ));
        text_diffs.push_str(&line_diff(&old_text, &new_text, 3));
    }
    let new_index = format::index_text(&index)?;
    write_atomic(&dir.join(staged(format::INDEX)), new_index.as_bytes())?;

    let mut diff = format!(
        "# Pending change to the golden {} (fakejvm replay --bless, {now}).\n\
         # Accept: fakejvm replay --accept {}    Reject: fakejvm replay --reject {}\n",
        dir.display(),
        dir.display(),
        dir.display()
    );
    diff.push_str("\n## Frame by frame (normalised; expected = golden, got = live)\n");
    for d in differences {
        diff.push_str(&format!("{d}\n"));
    }
    diff.push_str("\n## The decoded reply text\n");
    diff.push_str(&text_diffs);
    write_atomic(&dir.join(DIFF_FILE), diff.as_bytes())?;

    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        blessed_at: now,
        base_index_sha256: sha256(&base),
        new_index_sha256: sha256(new_index.as_bytes()),
        connections: changes.iter().map(|c| c.conn.clone()).collect(),
        files,
    };
    // Last: a manifest means every staged file is complete.
    write_atomic(
        &dir.join(MANIFEST),
        (serde_json::to_string_pretty(&manifest)? + "\n").as_bytes(),
    )?;
    Ok(pending(dir))
}

fn old_reply_text(golden: &Golden, dialect: Dialect, reply_file: &str) -> String {
    match golden.read(reply_file) {
        Ok(bytes) => {
            super::record::reply_text(dialect, &crate::protocol::decode_replies(dialect, &bytes).0)
                .unwrap_or_else(|e| format!("(the recorded replies do not re-encode: {e})\n"))
        }
        Err(e) => format!("({e})\n"),
    }
}

/// Drop the pending files of a golden (`--reject`, or before a new --bless). Refused in the
/// middle of an accept.
pub fn discard(dir: &Path) -> anyhow::Result<Vec<String>> {
    if accept_interrupted(dir) {
        anyhow::bail!("{}: an --accept stopped half way (index.json names the staged .new files); run `fakejvm replay --accept {}` to finish it", dir.display(), dir.display());
    }
    let files = pending(dir);
    // The manifest first: without it the rest is an incomplete stage, never accepted.
    for f in files
        .iter()
        .filter(|f| *f == MANIFEST)
        .chain(files.iter().filter(|f| *f != MANIFEST))
    {
        std::fs::remove_file(dir.join(f))
            .map_err(|e| anyhow::anyhow!("{}: cannot remove: {e}", dir.join(f).display()))?;
    }
    Ok(files)
}

/// Accept the pending change of a golden. See the module doc for the order of the steps.
pub fn accept(dir: &Path) -> anyhow::Result<Vec<String>> {
    accept_with(dir, &mut |_| Ok(()))
}

/// `accept`, calling `step` before each change on disk with the file about to change; an error
/// from it stops the accept there (tests use it to stop an accept at every step).
pub fn accept_with(
    dir: &Path,
    step: &mut dyn FnMut(&Path) -> std::io::Result<()>,
) -> anyhow::Result<Vec<String>> {
    let at = |f: &str| dir.join(f);
    let io = |what: &str, f: &Path, e: std::io::Error| {
        anyhow::anyhow!("{}: cannot {what}: {e}", f.display())
    };
    let manifest_text = std::fs::read_to_string(at(MANIFEST)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound && !pending(dir).is_empty() {
            anyhow::anyhow!("{}: the pending files are incomplete (no {MANIFEST}: the --bless stopped before the end); --reject them and bless again", dir.display())
        } else {
            io("read", &at(MANIFEST), e)
        }
    })?;
    let m: Manifest = serde_json::from_str(&manifest_text)
        .map_err(|e| anyhow::anyhow!("{}: not a pending manifest: {e}", at(MANIFEST).display()))?;
    let index_path = at(format::INDEX);
    let new_index_path = at(&staged(format::INDEX));
    let current = std::fs::read(&index_path).map_err(|e| io("read", &index_path, e))?;
    let current_sha = sha256(&current);
    if current_sha != m.new_index_sha256 {
        let new_text =
            std::fs::read(&new_index_path).map_err(|e| io("read", &new_index_path, e))?;
        if sha256(&new_text) != m.new_index_sha256 {
            anyhow::bail!(
                "{}: changed since --bless staged it; --reject the change and bless again",
                new_index_path.display()
            );
        }
        let new_index: Index = serde_json::from_slice(&new_text).map_err(|e| {
            anyhow::anyhow!("{}: not a golden index: {e}", new_index_path.display())
        })?;
        let interim = format::index_text(&pointing_at_staged(new_index, &m.files))?;
        if current_sha == m.base_index_sha256 {
            // The commit point: from here on the golden is the new one.
            step(&index_path).map_err(|e| io("write", &index_path, e))?;
            write_atomic(&index_path, interim.as_bytes())
                .map_err(|e| io("write", &index_path, e))?;
        } else if current_sha != sha256(interim.as_bytes()) {
            anyhow::bail!(
                "{}: changed since --bless staged this change; --reject it and bless again",
                index_path.display()
            );
        }
        for f in &m.files {
            let (from, to) = (at(&staged(f)), at(f));
            let bytes = std::fs::read(&from).map_err(|e| io("read", &from, e))?;
            step(&to).map_err(|e| io("write", &to, e))?;
            write_atomic(&to, &bytes).map_err(|e| io("write", &to, e))?;
        }
        // The index last.
        step(&index_path).map_err(|e| io("write", &index_path, e))?;
        std::fs::rename(&new_index_path, &index_path)
            .map_err(|e| io("rename index.json.new over", &index_path, e))?;
    }
    // Clean up: the staged files, the diff, then the manifest.
    let files = pending(dir);
    for f in files
        .iter()
        .filter(|f| *f != MANIFEST)
        .chain(files.iter().filter(|f| *f == MANIFEST))
    {
        step(&at(f)).map_err(|e| io("remove", &at(f), e))?;
        std::fs::remove_file(at(f)).map_err(|e| io("remove", &at(f), e))?;
    }
    Ok(m.connections)
}

/// The new index with each staged file named by its `.new` name.
fn pointing_at_staged(mut index: Index, files: &[String]) -> Index {
    for c in &mut index.connections {
        for f in [&mut c.reply, &mut c.reply_text] {
            if files.contains(f) {
                *f = staged(f);
            }
        }
    }
    index
}

/// The golden folders under `paths` that have pending files (folders searched as `collect` does).
pub fn pending_goldens(paths: &[PathBuf]) -> Result<Vec<PathBuf>, BadInput> {
    Ok(format::collect(paths)?
        .into_iter()
        .filter(|d| !pending(d).is_empty())
        .collect())
}

/// The pending golden `name` names: its folder, or a trailing part of its path
/// (`pyspark-4.0.5/map_parallelize`). Exactly one must match.
pub fn select(pending: &[PathBuf], name: &str) -> Result<PathBuf, BadInput> {
    let wanted = Path::new(name);
    let canonical = std::fs::canonicalize(wanted).ok();
    let hits: Vec<&PathBuf> = pending
        .iter()
        .filter(|d| {
            d.ends_with(wanted)
                || (canonical.is_some() && std::fs::canonicalize(d).ok() == canonical)
        })
        .collect();
    let listed = || {
        pending
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] if pending.is_empty() => Err(BadInput::new(
            wanted,
            "no golden has pending changes (run `fakejvm replay --bless` first)",
        )),
        [] => Err(BadInput::new(
            wanted,
            format!(
                "names no golden with pending changes; pending: {}",
                listed()
            ),
        )),
        many => Err(BadInput::new(
            wanted,
            format!(
                "names {} goldens with pending changes ({}): name one by more of its path",
                many.len(),
                many.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// What `--review` prints for one golden: its diff file (or, for an incomplete stage, its files).
pub fn review_text(dir: &Path) -> String {
    match std::fs::read_to_string(dir.join(DIFF_FILE)) {
        Ok(diff) if dir.join(MANIFEST).is_file() => diff,
        _ if accept_interrupted(dir) => format!("# {}: an --accept stopped half way; run `fakejvm replay --accept {}` to finish it\n", dir.display(), dir.display()),
        _ => format!("# {}: incomplete pending files (the --bless stopped before the end): {}; --reject them\n", dir.display(), pending(dir).join(", ")),
    }
}

/// A line diff of `old` and `new` (longest common subsequence), `context` unchanged lines around
/// each change, hunks headed `@@ -a,n +b,m @@` as in a unified diff.
pub(crate) fn line_diff(old: &str, new: &str, context: usize) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    // Goldens' reply texts are hundreds of lines at most; beyond that, show both sides whole.
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        let mut out: String = a.iter().map(|l| format!("-{l}\n")).collect();
        out.extend(b.iter().map(|l| format!("+{l}\n")));
        return out;
    }
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (tag, old line number, new line number, text)
    let mut ops: Vec<(char, usize, usize, &str)> = vec![];
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', i, j, a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j, a[i]));
            i += 1;
        } else {
            ops.push(('+', i, j, b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.0 != ' ')
        .map(|(k, _)| k)
        .collect();
    let mut out = String::new();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(context);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * context + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + context + 1).min(ops.len());
        let hunk = &ops[start..end];
        let (old_n, new_n) = (
            hunk.iter().filter(|o| o.0 != '+').count(),
            hunk.iter().filter(|o| o.0 != '-').count(),
        );
        out.push_str(&format!(
            "@@ -{},{old_n} +{},{new_n} @@\n",
            hunk[0].1 + 1,
            hunk[0].2 + 1
        ));
        for (tag, _, _, text) in hunk {
            out.push_str(&format!("{tag}{text}\n"));
        }
    }
    if out.is_empty() {
        out.push_str(
            "(the decoded text is the same: the difference is in bytes the text does not show)\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_diff_shows_changed_lines_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nD\ne\nf\ng\nh\ni\n";
        let d = line_diff(old, new, 1);
        assert_eq!(
            d,
            "@@ -3,3 +3,3 @@\n c\n-d\n+D\n e\n@@ -8,1 +8,2 @@\n h\n+i\n"
        );
        assert!(line_diff("x\n", "x\n", 3).contains("the same"));
    }

    #[test]
    fn selecting_a_pending_golden_needs_exactly_one_match() {
        let pending = vec![
            PathBuf::from("golden/pyspark-4.0.5/map"),
            PathBuf::from("golden/pyspark-4.1.4/map"),
        ];
        assert_eq!(select(&pending, "pyspark-4.1.4/map").unwrap(), pending[1]);
        let e = select(&pending, "map").unwrap_err().to_string();
        assert!(e.contains("names 2 goldens"), "{e}");
        let e = select(&pending, "nope").unwrap_err().to_string();
        assert!(
            e.contains("names no golden") && e.contains("pyspark-4.0.5/map"),
            "{e}"
        );
        assert!(select(&[], "x")
            .unwrap_err()
            .to_string()
            .contains("no golden has pending changes"));
    }
}
