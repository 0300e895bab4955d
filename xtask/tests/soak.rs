//! `cargo xtask bench soak` for a quarter of a minute per system, run as a user
//! would. It asserts only what must hold, never a timing or a count of false
//! failovers: the run succeeds, each system ends with exactly one holder of the
//! shared address, and every counter is reported in the table and the JSON
//! (tandem's bundle copies and from-syncs among them).
//! Needs root (the namespace lab), keepalived and stress-ng.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn a_short_soak_reports_its_counters_and_ends_with_one_holder() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    // The agents as `cargo test` builds them: a release build would double the
    // suite's time, and this test asserts no figure.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built = Command::new(cargo)
        .args(["build", "--quiet", "-p", "failover", "-p", "mp_replication"])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(built.success(), "building failover failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let run = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "soak", "--minutes", "0.25"])
        .env("TANDEM_BENCH_BIN_DIR", target.join("debug"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench soak failed (it needs root for the lab, keepalived and stress-ng: \
         `bash .ci/install-deps`):\n{out}\n{err}"
    );
    assert!(out.contains("Soak under stress"), "{out}");
    assert!(
        out.contains("soak") && out.contains("false failovers under stress"),
        "no summary row:\n{out}"
    );
    let json = std::fs::read_to_string(root.join("target/bench/soak.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let systems = json["systems"].as_array().unwrap();
    assert_eq!(systems.len(), 2, "{json}");
    for (i, system) in systems.iter().enumerate() {
        let holder = system["final_holder"].as_str().unwrap_or_default();
        assert!(holder == "node1" || holder == "node2", "{system}");
        for counter in [
            "false_failovers",
            "client_saw_changes",
            "polls_without_one_holder",
            "longest_gap_ms",
        ] {
            assert!(system[counter].is_number(), "{counter} missing: {system}");
        }
        assert!(system["polls"].as_u64().unwrap_or(0) > 0, "{system}");
        // tandem (first) counts peer-lost alarms and bundle copies; keepalived
        // has neither.
        if i == 0 {
            assert!(system["peer_lost_alarms"].is_number(), "{system}");
            assert!(system["copies"].is_array(), "{system}");
            assert!(system["from_syncs"].is_array(), "{system}");
        } else {
            assert!(system["peer_lost_alarms"].is_null(), "{system}");
        }
    }
}
