//! `fakejvm doctor` on worker envs as users ship them: a PEX built here with pyspark alone (not
//! ready: pandas, pyarrow and numpy missing, each with the fix, while the RDD task runs through
//! it), the full pinned 4.0.5 env (ready), a PEX with an entry point, a venv-pack archive, and bad
//! input (one line, exit 2). `run --python env.pex` runs a scenario through the PEX.
//!
//! The PEX tools come from PyPI, pinned, into a tool venv under the fakejvm cache
//! (`<cache_root>/tools/pex-<version>`), and the PEX is built offline from pyspark's wheel (pip's
//! wheel cache usually holds the one it built for the pinned env), once per set of inputs:
//! `<cache_root>/doctor-test/<name>-<key>.pex`. Nothing here skips: a tool that cannot be had
//! fails the test and says how to get it.

mod common;
use assert_cmd::Command;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command as Std;
use std::sync::OnceLock;

const PEX: &str = "2.105.2";
const VENV_PACK: &str = "0.2.0";
const PYSPARK: &str = "4.0.5";
/// pyspark 4.0.5's one hard requirement (py4j<0.10.9.10,>=0.10.9.7), pinned.
const PY4J: &str = "0.10.9.9";

fn fakejvm() -> Command {
    let mut c = Command::cargo_bin("fakejvm").expect("binary");
    // A PEX's first start lays out 400 MB of wheels: minutes on a busy machine, not a bound.
    c.env_remove("FAKEJVM_PYTHON")
        .timeout(std::time::Duration::from_secs(30 * 60));
    c
}

fn base_python() -> String {
    std::env::var("FAKEJVM_BASE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

fn run_step(cmd: &mut Std, what: &str, how: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}\n{how}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}\n{how}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A venv holding pex and venv-pack at pinned versions, made once (marker written last).
fn tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = fakejvm::pyenv::cache_root()
            .join("tools")
            .join(format!("pex-{PEX}-venv-pack-{VENV_PACK}"));
        let marker = dir.join("fakejvm-tools-ready");
        if marker.exists() {
            return dir;
        }
        let how = "The test needs PyPI (or the mirror in pip.conf) once to install pex; nothing is skipped.";
        eprintln!(
            "doctor test: installing pex=={PEX} and venv-pack=={VENV_PACK} from PyPI into a tool venv at {} (once)",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        run_step(
            Std::new(base_python()).args(["-m", "venv"]).arg(&dir),
            "creating the tool venv",
            how,
        );
        run_step(
            Std::new(dir.join("bin/python")).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                &format!("pex=={PEX}"),
                &format!("venv-pack=={VENV_PACK}"),
            ]),
            "pip install pex venv-pack",
            how,
        );
        std::fs::write(&marker, "").unwrap();
        dir
    })
}

/// `<cache_root>/doctor-test/<name>-<key>.pex`, built by `build(tmp)` unless a build of the same
/// inputs is there; the rename makes a half-built file impossible to pick up.
fn cached_pex(name: &str, inputs: &[&str], build: impl FnOnce(&Path)) -> PathBuf {
    let key = hex::encode(&Sha256::digest(inputs.join("\n").as_bytes())[..8]);
    let dir = fakejvm::pyenv::cache_root().join("doctor-test");
    std::fs::create_dir_all(&dir).unwrap();
    let pex = dir.join(format!("{name}-{key}.pex"));
    if !pex.exists() {
        let tmp = dir.join(format!("{name}-{key}.pex.tmp{}", std::process::id()));
        build(&tmp);
        std::fs::rename(&tmp, &pex).unwrap();
    }
    pex
}

/// A PEX with pyspark 4.0.5 and py4j only, as `pex pyspark==4.0.5 -o env.pex` makes it.
fn pyspark_only_pex() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let python = base_python();
        let minor = fakejvm::pyenv::base_python_minor().unwrap();
        let inputs = [PEX, PYSPARK, PY4J, python.as_str(), minor.as_str()];
        cached_pex("pyspark-only", &inputs, |out| {
            let tools = tools();
            let wheels = fakejvm::pyenv::cache_root()
                .join("doctor-test")
                .join(format!("wheels-pyspark-{PYSPARK}"));
            eprintln!(
                "doctor test: pip wheel pyspark=={PYSPARK} py4j=={PY4J} into {} (from pip's cache when it has them; else a 400 MB download and build)",
                wheels.display()
            );
            run_step(
                Std::new(&python)
                    .args(["-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "-q", "--no-deps", "-w"])
                    .arg(&wheels)
                    .args([format!("pyspark=={PYSPARK}"), format!("py4j=={PY4J}")]),
                "pip wheel pyspark",
                "pip needs PyPI, or pyspark's wheel in its cache.",
            );
            eprintln!("doctor test: building {} with pex {PEX} (about a minute, once)", out.display());
            run_step(
                Std::new(tools.join("bin/pex"))
                    .args(["--no-pypi", "-f"])
                    .arg(&wheels)
                    .args([format!("pyspark=={PYSPARK}"), format!("py4j=={PY4J}")])
                    .arg("--python")
                    .arg(&python)
                    .arg("-o")
                    .arg(out),
                "pex build",
                "see pex's message above",
            );
        })
    })
}

/// Runs doctor with `args`, expects exit `code`, returns stdout.
fn doctor(args: &[&str], code: i32) -> String {
    let out = fakejvm()
        .arg("doctor")
        .args(args)
        .assert()
        .code(code)
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.is_ascii(), "the checklist is plain ASCII:\n{stdout}");
    stdout
}

/// The checklist line for `label` (`  MARK  LABEL  detail`) with its follow-up lines (fix,
/// notes); it must carry `mark`.
fn item(stdout: &str, mark: &str, label: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            l.starts_with("  ")
                && l.get(8..)
                    .is_some_and(|r| r.starts_with(&format!("{label} ")))
        })
        .unwrap_or_else(|| panic!("no line for {label:?} in:\n{stdout}"));
    assert!(
        lines[at][2..].starts_with(&format!("{mark} ")),
        "{label} should be {mark}:\n{stdout}"
    );
    let mut text = lines[at].to_string();
    for l in lines[at + 1..]
        .iter()
        .take_while(|l| l.starts_with(&" ".repeat(20)))
    {
        text.push('\n');
        text.push_str(l);
    }
    text
}

#[test]
fn a_pex_with_pyspark_alone_is_not_ready_and_says_what_to_add() {
    let pex = pyspark_only_pex();
    let out = doctor(&["--python", pex.to_str().unwrap(), "--spark", "4.0.5"], 1);
    assert!(out.contains("(a PEX file, run as the interpreter"), "{out}");
    item(&out, "ok", "python");
    assert!(
        item(&out, "ok", "pyspark").contains("4.0.5 matches Spark 4.0.5"),
        "{out}"
    );
    item(&out, "ok", "py4j");
    // Each missing package's line: what is wrong, and one rebuild that adds them all.
    let rebuild = "fix: rebuild the PEX with them: pex py4j==0.10.9.9 pyspark==4.0.5 'pandas>=2.0.0' 'pyarrow>=11.0.0' 'numpy>=1.21' -o ";
    for name in ["pandas", "pyarrow", "numpy"] {
        let line = item(&out, "FAIL", name);
        assert!(line.contains("not installed"), "{line}");
        assert!(line.contains(rebuild), "{line}");
    }
    assert!(item(&out, "ok", "RDD task").contains("passed"), "{out}");
    assert!(item(&out, "ok", "SQL UDF").contains("passed"), "{out}");
    assert!(
        item(&out, "N/A", "pandas UDF")
            .contains("needs pandas, pyarrow and numpy, which this env lacks"),
        "{out}"
    );
    assert!(
        item(&out, "N/A", "Arrow UDF").contains("from pyspark 4.1"),
        "{out}"
    );
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("NOT READY: 3 of 10 checks failed (pandas, pyarrow, numpy)"),
        "{out}"
    );
}

#[test]
fn the_full_pinned_env_is_ready() {
    let env = common::env_for(PYSPARK);
    let out = doctor(
        &["--python", env.python.to_str().unwrap(), "--spark", "4.0.5"],
        0,
    );
    for label in ["python", "pyspark", "py4j", "pandas", "pyarrow", "numpy"] {
        item(&out, "ok", label);
    }
    assert!(
        item(&out, "ok", "pandas").contains("pyspark's own check passes"),
        "{out}"
    );
    for label in ["RDD task", "SQL UDF", "pandas UDF"] {
        assert!(item(&out, "ok", label).contains("passed"), "{out}");
    }
    assert!(
        item(&out, "N/A", "Arrow UDF").contains("from pyspark 4.1"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    assert!(out.lines().last().unwrap().starts_with("READY: "), "{out}");
}

#[test]
fn a_pyspark_of_another_line_does_not_match_the_cluster() {
    // The env directory itself, as a user names a venv; its pyspark is 4.0.5, the cluster 4.1.
    let env = common::env_for(PYSPARK);
    let dir = env.python.parent().unwrap().parent().unwrap();
    let out = doctor(&["--python", dir.to_str().unwrap(), "--spark", "4.1.4"], 1);
    assert!(out.contains("(an env directory, run as "), "{out}");
    let line = item(&out, "FAIL", "pyspark");
    assert!(line.contains("4.0.5 does not match Spark 4.1.4"), "{line}");
    assert!(line.contains("-m pip install pyspark==4.1.4"), "{line}");
    // A patch difference inside the line is only noted.
    let out = doctor(&["--python", dir.to_str().unwrap(), "--spark", "4.0.2"], 0);
    assert!(
        item(&out, "ok", "pyspark").contains("note: the patch releases differ"),
        "{out}"
    );
}

#[test]
fn run_takes_a_pex_as_the_interpreter() {
    let pex = pyspark_only_pex();
    let out = fakejvm()
        .args(["run", "--python", pex.to_str().unwrap()])
        .arg(common::repo_root().join("scenarios/core/map_double.json"))
        .assert()
        .code(0)
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("PASS") && stdout.contains("pyspark 4.0.5"),
        "{stdout}"
    );
}

#[test]
fn a_pex_with_an_entry_point_is_not_an_interpreter() {
    let pex = cached_pex("json-tool", &[PEX, "-m json.tool"], |out| {
        run_step(
            Std::new(tools().join("bin/pex"))
                .args(["-m", "json.tool", "-o"])
                .arg(out),
            "pex -m json.tool",
            "see pex's message above",
        );
    });
    let out = doctor(&["--python", pex.to_str().unwrap()], 1);
    let line = item(&out, "FAIL", "interpreter");
    assert!(
        line.contains("runs its entry point `json.tool` instead of Python")
            && line.contains("fix: rebuild it without -m/-e/-c/--script")
            && line.contains("PEX_INTERPRETER=1"),
        "{line}"
    );
    // Elsewhere it is bad input, one line.
    let out = fakejvm()
        .args(["env", "--python", pex.to_str().unwrap()])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("entry point `json.tool`"), "{stderr}");
}

#[test]
fn a_venv_pack_archive_is_unpacked_once_and_checked() {
    // A venv without pyspark, packed by the real venv-pack: not ready, and says how to fix it.
    let scratch = tempfile::tempdir().unwrap();
    let venv = scratch.path().join("venv");
    run_step(
        Std::new(base_python())
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv),
        "creating a venv",
        "the base Python needs the venv module",
    );
    let archive = scratch.path().join("env.tar.gz");
    run_step(
        Std::new(tools().join("bin/venv-pack"))
            .arg("-p")
            .arg(&venv)
            .arg("-o")
            .arg(&archive),
        "venv-pack",
        "see venv-pack's message above",
    );
    let first = fakejvm()
        .args(["doctor", "--python", archive.to_str().unwrap()])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&first.stdout);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("fakejvm: unpacking "), "{stderr}");
    assert!(
        stdout.contains("(a venv-pack archive, unpacked into "),
        "{stdout}"
    );
    let line = item(&stdout, "FAIL", "pyspark");
    assert!(line.contains("not installed"), "{line}");
    assert!(
        line.contains("then pack it again: venv-pack -p VENV -o "),
        "{line}"
    );
    for probe in ["RDD task", "SQL UDF", "pandas UDF", "Arrow UDF"] {
        item(&stdout, "N/A", probe);
    }
    // The same content again: no second unpacking.
    let again = fakejvm()
        .args(["doctor", "--python", archive.to_str().unwrap()])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("unpacking"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Every run packs a new venv (new content, new key): drop its cache entry and marker.
    let entry = stdout
        .split("unpacked into ")
        .nth(1)
        .and_then(|rest| rest.split(", run as").next())
        .map(PathBuf::from)
        .expect("the unpacked directory is named");
    assert!(
        entry.starts_with(fakejvm::pyenv::cache_root().join("shipped")),
        "{}",
        entry.display()
    );
    std::fs::remove_dir_all(&entry).unwrap();
    std::fs::remove_file(entry.with_extension("json")).unwrap();
}

#[test]
fn what_is_no_env_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let not_python = dir.path().join("not-python");
    std::fs::write(&not_python, "#!/bin/sh\necho hello\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&not_python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let corrupt = dir.path().join("env.tar.gz");
    std::fs::write(&corrupt, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
    let no_env = dir.path().join("docs.tar.gz");
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("docs/README"), "not an env").unwrap();
    run_step(
        Std::new("tar")
            .arg("-czf")
            .arg(&no_env)
            .arg("-C")
            .arg(dir.path())
            .arg("docs"),
        "tar",
        "GNU tar is needed",
    );
    let cases: [(&[&str], &str); 6] = [
        (
            &["--python", no_env.to_str().unwrap()],
            "it holds no env: no bin/python",
        ),
        (
            &["--python", "/nonexistent/env.pex"],
            "no such file or directory",
        ),
        (
            &["--python", dir.path().to_str().unwrap()],
            "is a directory but neither a venv",
        ),
        (
            &["--python", not_python.to_str().unwrap()],
            "cannot learn the Python and pyspark versions",
        ),
        (
            &["--python", corrupt.to_str().unwrap()],
            "tar cannot unpack it",
        ),
        (
            &["--python", "python3", "--spark", "four"],
            "--spark \"four\"",
        ),
    ];
    for (args, wanted) in cases {
        let out = fakejvm()
            .arg("doctor")
            .args(args)
            .assert()
            .code(2)
            .get_output()
            .clone();
        // One line of error; an archive is found corrupt only while it is unpacked, so the
        // progress line that says so may come first.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("fakejvm: unpacking "))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(
            errors[0].starts_with("fakejvm: ") && errors[0].contains(wanted),
            "{args:?}: {stderr}"
        );
    }
}
