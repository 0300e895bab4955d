//! `mp_replication` as a process on one node, without the lab (no root needed): which
//! config file it reads (`--config`, `TANDEM_CONFIG`, the default) and what it does
//! when its stdout is closed early (`mp_replication checksum | head -1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tandem_replication::DEFAULT_CONFIG_PATH;

const BIN: &str = env!("CARGO_BIN_EXE_mp_replication");

/// A node directory: `node.toml` (node 1, hostname `tandem-test-node`, the sample
/// schema) and a state directory.
struct NodeDir {
    dir: tempfile::TempDir,
}

impl NodeDir {
    fn new() -> NodeDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node.toml"),
            "[node]\nid = 1\nhostname = \"tandem-test-node\"\n\n[replication]\nsample_schema = true\n",
        )
        .unwrap();
        NodeDir { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("node.toml")
    }

    /// `mp_replication --state-dir <dir>/state args...`, with neither `TANDEM_CONFIG`
    /// nor `TANDEM_STATE_DIR` from the test's environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("TANDEM_CONFIG")
            .env_remove("TANDEM_STATE_DIR")
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `init` and `promote` with `--config`: a writable node 1 with the sample schema.
    fn initialized(self) -> NodeDir {
        let config = self.config();
        let config = config.to_str().unwrap();
        for args in [
            &[
                "--config",
                config,
                "init",
                "-n",
                "1",
                "-r",
                "192.0.2.12:7452",
            ][..],
            &["--config", config, "promote"][..],
        ] {
            let out = self.run(args);
            assert!(out.status.success(), "{args:?}: {}", text(&out));
        }
        self
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Bug 9: `TANDEM_CONFIG` names the config file, as it does for `failover`.
#[test]
fn tandem_config_names_the_config_file_and_a_named_file_is_required() {
    let node = NodeDir::new();
    let out = node
        .command(&["init", "-n", "1", "-r", "192.0.2.12:7452"])
        .env("TANDEM_CONFIG", node.config())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains("(Host = tandem-test-node;") && last.ends_with("is SUCCESSFUL"),
        "{last}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("no config file"),
        "{}",
        text(&out)
    );

    // A config named by TANDEM_CONFIG that is missing is an error, not defaults.
    let missing = node.dir.path().join("missing.toml");
    let out = node
        .command(&["status"])
        .env("TANDEM_CONFIG", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.toml"),
        "{}",
        text(&out)
    );
}

/// Bug 9: without `--config`, `TANDEM_CONFIG` or the default file, the commands that
/// change something say once that they run without a config; reading ones do not.
#[test]
fn without_any_config_file_changing_commands_say_so_once() {
    let node = NodeDir::new().initialized();
    let default_exists = Path::new(DEFAULT_CONFIG_PATH).exists();
    for (args, changes) in [(&["demote"][..], true), (&["status"][..], false)] {
        let out = node.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let notes = stderr.matches("no config file").count();
        let expected = usize::from(changes && !default_exists);
        assert_eq!(notes, expected, "{args:?}:\n{}", text(&out));
        if expected == 1 {
            assert!(stderr.contains(DEFAULT_CONFIG_PATH), "{stderr}");
            assert!(stderr.contains("TANDEM_CONFIG"), "{stderr}");
        }
    }
}

/// `init -n` takes node 1 or 2; anything else is a usage error (status 2) that names
/// both, before anything is opened.
#[test]
fn init_refuses_a_node_other_than_1_or_2() {
    let node = NodeDir::new();
    let config = node.config();
    let config = config.to_str().unwrap();
    for bad in ["3", "0", "one"] {
        let out = node.run(&[
            "--config",
            config,
            "init",
            "-n",
            bad,
            "-r",
            "192.0.2.12:7452",
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("'{bad}'")) && stderr.contains("[possible values: 1, 2]"),
            "{bad}: {stderr}"
        );
    }
    assert!(!node.dir.path().join("state").exists());
}

/// Bug 10: a reader that closed its end (`| head -1`) ends every command quietly, with
/// exit status 0 and no panic.
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let node = NodeDir::new().initialized();
    let config = node.config();
    let config = config.to_str().unwrap();
    for args in [
        &["--config", config, "checksum"][..],
        &["--config", config, "checksum", "--json"][..],
        &["--config", config, "status"][..],
        &["--config", config, "status", "--json"][..],
        &["--config", config, "promote", "-v"][..],
        &[
            "--config",
            config,
            "write-sample",
            "--first",
            "1",
            "--count",
            "3",
        ][..],
    ] {
        // A pipe whose reading end is closed before the program writes anything.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = node
            .command(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
