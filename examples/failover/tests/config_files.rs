//! The built `failover` binary on temporary trees: copy-config-files and
//! restore-config-files, their aliases, dry run, rollback, refusals, exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    /// An active node's roots and config, and empty standby state.
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let site = Site { dir };
        let enrollment = site.path("active/enrollment");
        let prompts = site.path("active/prompts");
        std::fs::create_dir_all(enrollment.join("ssl")).unwrap();
        std::fs::create_dir_all(prompts.join("custom")).unwrap();
        std::fs::write(
            enrollment.join("ssl/server.pem"),
            b"-----BEGIN CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(enrollment.join("host.key"), b"node-specific key").unwrap();
        std::fs::write(prompts.join("custom/welcome.wav"), vec![1u8; 50_000]).unwrap();
        std::fs::write(prompts.join("custom/notes.txt"), b"not a prompt").unwrap();
        let config = format!(
            r#"
[node]
id = 1

[bundle]
node = ["enrollment/host.key"]

[[bundle.roots]]
name = "enrollment"
path = "{}"

[[bundle.roots]]
name = "prompts"
path = "{}"
include = ["**/*.wav"]
"#,
            enrollment.display(),
            prompts.display()
        );
        std::fs::write(site.path("node.toml"), config).unwrap();
        site
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn failover(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_failover"))
            .args(args)
            .env_remove("TANDEM_CONFIG")
            .env_remove("TANDEM_STATE_DIR")
            .output()
            .unwrap();
        eprintln!(
            "$ failover {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn copy_to(&self, bundle: &Path) -> Output {
        let config = self.path("node.toml");
        self.failover(&[
            "--config",
            s(&config),
            "copy-config-files",
            "--output",
            s(bundle),
        ])
    }

    fn restore(&self, extra: &[&str]) -> Output {
        let state = self.path("standby-state");
        let root = self.path("standby");
        let mut args = vec![
            "--state-dir",
            s(&state),
            "restore-config-files",
            "--root",
            s(&root),
        ];
        args.extend_from_slice(extra);
        self.failover(&args)
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn copy_then_restore_puts_the_copied_files_in_place_and_leaves_node_files() {
    let site = Site::new();
    let bundle = site.path("b.tar.gz");
    let out = site.copy_to(&bundle);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Bundled 2 files"), "{}", stdout(&out));

    let out = site.restore(&["--bundle", s(&bundle)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("create"), "{}", stdout(&out));
    assert!(stdout(&out).contains("--rollback"), "{}", stdout(&out));
    let standby = site.path("standby");
    assert_eq!(
        std::fs::read(standby.join("enrollment/ssl/server.pem")).unwrap(),
        b"-----BEGIN CERTIFICATE-----\n"
    );
    assert_eq!(
        std::fs::read(standby.join("prompts/custom/welcome.wav"))
            .unwrap()
            .len(),
        50_000
    );
    // Config class `node` and files outside the include globs stay home.
    assert!(!standby.join("enrollment/host.key").exists());
    assert!(!standby.join("prompts/custom/notes.txt").exists());
}

#[test]
fn the_seed_names_work_as_aliases_and_default_paths_meet_in_the_state_dir() {
    let site = Site::new();
    let config = site.path("node.toml");
    let active_state = site.path("active-state");
    let out = site.failover(&[
        "--config",
        s(&config),
        "--state-dir",
        s(&active_state),
        "copyConfigFiles",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let outgoing = active_state.join("outgoing/config-files.tar.gz");
    assert!(outgoing.exists());
    assert!(
        stdout(&out).contains("incoming/config-files.tar.gz"),
        "{}",
        stdout(&out)
    );

    // The operator carries it to the standby's incoming path.
    let incoming = site.path("standby-state/incoming/config-files.tar.gz");
    std::fs::create_dir_all(incoming.parent().unwrap()).unwrap();
    std::fs::copy(&outgoing, &incoming).unwrap();
    let state = site.path("standby-state");
    let root = site.path("standby");
    let out = site.failover(&[
        "--state-dir",
        s(&state),
        "restoreConfigFiles",
        "--root",
        s(&root),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(root.join("prompts/custom/welcome.wav").exists());
}

#[test]
fn dry_run_lists_and_changes_nothing_then_rollback_undoes_a_restore() {
    let site = Site::new();
    let bundle = site.path("b.tar.gz");
    assert_eq!(site.copy_to(&bundle).status.code(), Some(0));
    let standby = site.path("standby");
    std::fs::create_dir_all(standby.join("enrollment/ssl")).unwrap();
    std::fs::write(
        standby.join("enrollment/ssl/server.pem"),
        b"the standby's old certificate",
    )
    .unwrap();

    let out = site.restore(&["--bundle", s(&bundle), "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("replace"), "{}", stdout(&out));
    assert!(stdout(&out).contains("Dry run"), "{}", stdout(&out));
    assert_eq!(
        std::fs::read(standby.join("enrollment/ssl/server.pem")).unwrap(),
        b"the standby's old certificate"
    );
    assert!(!standby.join("prompts").exists());

    let out = site.restore(&["--bundle", s(&bundle), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["dry_run"], false);
    assert!(
        json["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["action"] == "replace")
    );
    assert_eq!(
        std::fs::read(standby.join("enrollment/ssl/server.pem")).unwrap(),
        b"-----BEGIN CERTIFICATE-----\n"
    );

    let out = site.restore(&["--rollback"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read(standby.join("enrollment/ssl/server.pem")).unwrap(),
        b"the standby's old certificate"
    );
    assert!(!standby.join("prompts").exists());

    // Nothing left to roll back.
    let out = site.restore(&["--rollback"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing to roll back"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_damaged_bundle_is_refused_with_exit_1_and_nothing_changes() {
    let site = Site::new();
    let bundle = site.path("b.tar.gz");
    assert_eq!(site.copy_to(&bundle).status.code(), Some(0));
    let mut bytes = std::fs::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&bundle, &bytes).unwrap();
    let out = site.restore(&["--bundle", s(&bundle)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(site.path("standby")).unwrap().count(), 0);
    assert!(!site.path("standby-state").exists());
}

#[test]
fn bad_config_and_missing_bundle_are_clear_errors() {
    let site = Site::new();
    std::fs::write(site.path("bad.toml"), "[bundle]\nroots = 3\n").unwrap();
    let bad = site.path("bad.toml");
    let out = site.failover(&[
        "--config",
        s(&bad),
        "copy-config-files",
        "--output",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.toml"), "{}", stderr(&out));

    let missing = site.path("nope.tar.gz");
    let out = site.restore(&["--bundle", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope.tar.gz"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let site = Site::new();
    let out = site.failover(&["restore-config-files", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let out = site.failover(&["restore-config-files", "--rollback", "--bundle", "x"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn copy_json_reports_the_bundle() {
    let site = Site::new();
    let bundle = site.path("b.tar.gz");
    let config = site.path("node.toml");
    let out = site.failover(&[
        "--config",
        s(&config),
        "copy-config-files",
        "--output",
        s(&bundle),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["files"], 2);
    assert_eq!(json["bundle"], s(&bundle));
    assert_eq!(
        json["bundle_bytes"],
        std::fs::metadata(&bundle).unwrap().len()
    );
}

#[test]
fn a_config_without_roots_shows_an_example() {
    let site = Site::new();
    std::fs::write(site.path("empty.toml"), "[node]\nid = 2\n").unwrap();
    let empty = site.path("empty.toml");
    let out = site.failover(&[
        "--config",
        s(&empty),
        "copy-config-files",
        "--output",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("[[bundle.roots]]"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("/usr/local/enrollment"),
        "{}",
        stderr(&out)
    );
}
