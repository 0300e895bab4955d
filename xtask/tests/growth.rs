//! `cargo xtask bench growth` at a small size (5,000 changes, a 24 MiB
//! database), run as a user would with the debug binaries. It asserts what a
//! user would check, never a timing: the run succeeds, every change arrived
//! (the bench compares both nodes' row counts and SHA-256 per table after each
//! phase and records it), the database reached the size asked for, and the
//! rows are printed and written to `target/bench/growth.json`.
//! Needs root (the namespace lab) and sqlite3.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn a_small_growth_run_reports_its_rows_and_loses_no_change() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    // The binaries as `cargo test` builds them: this test asserts no figure.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built = Command::new(cargo)
        .args(["build", "--quiet", "-p", "mp_replication"])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(built.success(), "building mp_replication failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let run = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "growth", "--changes", "5000", "--db-mib", "24"])
        .env("TANDEM_BENCH_BIN_DIR", target.join("debug"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench growth failed (it needs root for the lab and sqlite3: \
         `bash .ci/install-deps`):\n{out}\n{err}"
    );
    assert!(out.contains("How cost grows"), "no detailed table:\n{out}");
    for row in [
        "catch-up of 5000 changes",
        "node 1's commit rate during the catch-up",
        "from-sync of the same database",
        "plain TCP copy",
        "services during the catch-up",
    ] {
        assert!(out.contains(row), "no row `{row}`:\n{out}");
    }
    let json = std::fs::read_to_string(root.join("target/bench/growth.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["checksums_equal"], true, "{json}");
    assert_eq!(json["changes"], 5000, "{json}");
    let rows = json["final_rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "one count per sample table: {json}");
    for table in rows {
        assert!(table[1].as_u64().unwrap() > 0, "an empty table: {json}");
    }
    assert!(json["large"]["db_mib"].as_f64().unwrap() >= 22.0, "{json}");
    for phase in [
        &json["catch_up"],
        &json["from_sync_same"],
        &json["large"]["floor"],
        &json["large"]["from_sync"],
    ] {
        assert!(phase["seconds"].as_f64().unwrap() > 0.0, "{phase}");
        assert!(
            phase["node1"]["rss_peak_mib"].as_f64().unwrap() > 0.0,
            "{phase}"
        );
        assert!(
            phase["node2"]["rss_peak_mib"].as_f64().unwrap() > 0.0,
            "{phase}"
        );
    }
    // The writer kept committing during the catch-up and the from-syncs.
    for phase in ["catch_up", "from_sync_same"] {
        assert!(
            json[phase]["commits"].as_u64().unwrap() > 0,
            "{phase}: {json}"
        );
    }
    assert!(
        json["large"]["from_sync"]["commits"].as_u64().unwrap() > 0,
        "{json}"
    );
}
