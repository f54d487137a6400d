//! `fakejvm bench` at tiny sizes on every pinned pyspark, without the Spark JVM: each row runs
//! through fakejvm and the worker alone, the Arrow row's reply is counted row by row, and nothing
//! is said about speed.

mod common;
use assert_cmd::Command;
use common::env_for;
use serde_json::Value as J;

/// Two full batches of 10,000 rows and a partial one.
const DOUBLES: u64 = 25_000;

#[test]
fn bench_runs_every_row_on_every_pinned_pyspark() {
    for version in ["3.5.9", "4.0.5", "4.1.4", "4.2.1", "4.3.0"] {
        let env = env_for(version);
        let out = Command::cargo_bin("fakejvm")
            .expect("binary")
            .env_remove("FAKEJVM_PYTHON")
            .timeout(std::time::Duration::from_secs(300))
            .args(["bench", "--python"])
            .arg(&env.python)
            .args(["--lines", "200", "--ints", "300", "--no-spark", "--json"])
            .args(["--doubles", &DOUBLES.to_string()])
            .assert()
            .success()
            .get_output()
            .clone();
        let report: J = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{version}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(report["pyspark"], version);
        assert_eq!(report["notes"], J::Array(vec![]), "{version}: {report:#}");
        let rows = report["results"].as_array().expect("results");
        let loads: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
        assert_eq!(loads, ["text", "ints", "arrow"], "{version}");
        for r in rows {
            assert!(r["worker_alone_s"].is_f64(), "{version}: {r:#}");
            assert!(r["spark_s"].is_null(), "{version}: {r:#}");
        }
        let arrow = &rows[2];
        assert_eq!(arrow["records"], DOUBLES, "{version}");
        assert_eq!(arrow["reply_rows"], DOUBLES, "{version}");
        assert_eq!(arrow["reply_batches"], 3, "{version}");
        assert_eq!(arrow["reply_frames"], 1, "{version}: one Arrow stream");
    }
}
