//! Creating bundles: what goes in and what stays out, determinism, long and deep
//! names, hard links, and that GNU tar reads the result.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{assert_same, file, snapshot};
use tandem_bundle::{BundleSpec, CreateOptions, Error, RestoreOptions, RootSpec};

fn bundle(spec: &BundleSpec) -> Vec<u8> {
    let mut out = Vec::new();
    tandem_bundle::create(spec, &mut out, &CreateOptions::default(), &mut |_| {}).unwrap();
    out
}

fn restore_under(bytes: &[u8], dir: &Path) -> tandem_bundle::RestoreReport {
    std::fs::create_dir_all(dir).unwrap();
    let bundle = dir.join("in.tar.gz");
    std::fs::write(&bundle, bytes).unwrap();
    let target = dir.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let options = RestoreOptions::new(dir.join("state")).under(&target);
    tandem_bundle::restore(&bundle, &BundleSpec::default(), &options, &mut |_| {}).unwrap()
}

fn entries(bytes: &[u8]) -> Vec<String> {
    let manifest = tandem_bundle::verify_bytes(bytes, &BundleSpec::default()).unwrap();
    manifest.entries.into_iter().map(|e| e.path).collect()
}

#[test]
fn include_exclude_and_node_class_decide_what_goes_in() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    file(&web.join("app.conf"), b"a", 0o644, 1);
    file(&web.join("server.xml"), b"node specific", 0o644, 1);
    file(&web.join("logs/today.log"), b"log", 0o644, 1);
    file(&web.join("tmp/scratch.conf"), b"tmp", 0o644, 1);
    file(&web.join("ssl/site.pem"), b"pem", 0o644, 1);
    let prompts = dir.path().join("prompts");
    file(&prompts.join("custom/hello.wav"), b"RIFF", 0o644, 1);
    file(&prompts.join("custom/readme.txt"), b"text", 0o644, 1);
    std::fs::create_dir_all(prompts.join("empty")).unwrap();
    let spec = BundleSpec {
        roots: vec![
            RootSpec {
                exclude: vec!["**/*.log".into(), "tmp".into()],
                ..RootSpec::new("web", &web)
            },
            RootSpec {
                include: vec!["**/*.wav".into()],
                ..RootSpec::new("prompts", &prompts)
            },
        ],
        node: vec!["web/server.xml".into()],
        ..BundleSpec::default()
    };
    let got = entries(&bundle(&spec));
    assert_eq!(
        got,
        vec![
            "web",
            "web/app.conf",
            "web/logs",
            "web/ssl",
            "web/ssl/site.pem",
            "prompts",
            "prompts/custom",
            "prompts/custom/hello.wav"
        ]
    );
}

#[test]
fn the_same_tree_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    for i in 0..50 {
        file(
            &root.join(format!("d{}/f{i}.conf", i % 7)),
            format!("value {i}\n").as_bytes(),
            0o644,
            1_600_000_000 + i,
        );
    }
    let spec = BundleSpec {
        roots: vec![RootSpec::new("r", &root)],
        ..BundleSpec::default()
    };
    assert_eq!(bundle(&spec), bundle(&spec));
    let one = {
        let mut out = Vec::new();
        tandem_bundle::create(
            &spec,
            &mut out,
            &CreateOptions::with_threads(1),
            &mut |_| {},
        )
        .unwrap();
        out
    };
    // Thread count does not change the bytes either: members are cut at fixed sizes.
    assert_eq!(one, bundle(&spec));
}

#[test]
fn long_names_deep_nesting_and_hard_links_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src/r");
    let mut deep = root.clone();
    for i in 0..40 {
        deep = deep.join(format!("level-{i:02}-ünïcødé"));
    }
    file(
        &deep.join("x".repeat(200)),
        b"deep and long",
        0o600,
        1_700_000_000,
    );
    std::os::unix::fs::symlink("../".repeat(10) + &"y".repeat(150), deep.join("long-link"))
        .unwrap();
    file(
        &root.join("prompts/a.wav"),
        b"shared inode",
        0o644,
        1_700_000_001,
    );
    std::fs::hard_link(root.join("prompts/a.wav"), root.join("prompts/b.wav")).unwrap();
    std::fs::hard_link(root.join("prompts/a.wav"), root.join("c.wav")).unwrap();
    common::set_mtime(&root.join("prompts"), 1_700_000_002, 0);
    let spec = BundleSpec {
        roots: vec![RootSpec::new("r", &root)],
        ..BundleSpec::default()
    };
    let bytes = bundle(&spec);
    let restored = dir.path().join("dst");
    restore_under(&bytes, &restored);
    assert_same(
        &snapshot(&root),
        &snapshot(&restored.join("target/r")),
        "deep tree",
    );
}

#[test]
fn gnu_tar_reads_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src/r");
    file(&root.join("a.conf"), b"alpha", 0o644, 1_600_000_000);
    // Several gzip members: more than one 1 MiB chunk.
    file(
        &root.join("big.wav"),
        &(0..3_000_000u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<_>>(),
        0o644,
        1_600_000_000,
    );
    let spec = BundleSpec {
        roots: vec![RootSpec::new("r", &root)],
        ..BundleSpec::default()
    };
    let path = dir.path().join("b.tar.gz");
    tandem_bundle::create_file(&spec, &path, &CreateOptions::default(), &mut |_| {}).unwrap();
    let out = dir.path().join("gnu");
    std::fs::create_dir(&out).unwrap();
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&path)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "GNU tar could not read the bundle");
    assert_eq!(std::fs::read(out.join("r/a.conf")).unwrap(), b"alpha");
    assert_eq!(
        std::fs::read(out.join("r/big.wav")).unwrap(),
        std::fs::read(root.join("big.wav")).unwrap()
    );
    assert!(out.join(".tandem-bundle/manifest.json").exists());
}

#[test]
fn sockets_and_fifos_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    file(&root.join("a.conf"), b"a", 0o644, 1);
    let _socket = std::os::unix::net::UnixListener::bind(root.join("daemon.sock")).unwrap();
    nix::unistd::mkfifo(
        &root.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let spec = BundleSpec {
        roots: vec![RootSpec::new("r", &root)],
        ..BundleSpec::default()
    };
    let mut out = Vec::new();
    let report =
        tandem_bundle::create(&spec, &mut out, &CreateOptions::default(), &mut |_| {}).unwrap();
    let skipped: Vec<_> = report
        .skipped
        .iter()
        .map(|s| s.path.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(skipped, vec!["daemon.sock", "pipe"]);
    assert_eq!(entries(&out), vec!["r", "r/a.conf"]);
}

#[test]
fn create_refuses_links_out_of_the_root_and_setid_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    file(&root.join("a.conf"), b"a", 0o644, 1);
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
    let spec = BundleSpec {
        roots: vec![RootSpec::new("r", &root)],
        ..BundleSpec::default()
    };
    let err = tandem_bundle::create(
        &spec,
        &mut Vec::new(),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Unbundlable { reason, .. } if reason.contains("absolute")),
        "{err}"
    );
    // Excluding it is the way out.
    let spec = BundleSpec {
        roots: vec![RootSpec {
            exclude: vec!["passwd".into()],
            ..RootSpec::new("r", &root)
        }],
        ..BundleSpec::default()
    };
    tandem_bundle::create(
        &spec,
        &mut Vec::new(),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .unwrap();

    std::fs::remove_file(root.join("passwd")).unwrap();
    file(&root.join("tool"), b"#!/bin/sh\n", 0o4755, 1);
    let err = tandem_bundle::create(
        &spec,
        &mut Vec::new(),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("allow_setid"), "{err}");
    let allowed = BundleSpec {
        allow_setid: true,
        ..spec
    };
    tandem_bundle::create(
        &allowed,
        &mut Vec::new(),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .unwrap();
}

#[test]
fn progress_counts_content_bytes_up_to_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    file(&root.join("a"), &[1u8; 70_000], 0o644, 1);
    file(&root.join("b"), &[2u8; 30_000], 0o644, 1);
    let spec = BundleSpec {
        roots: vec![RootSpec::new("r", &root)],
        ..BundleSpec::default()
    };
    let mut seen = Vec::new();
    tandem_bundle::create(
        &spec,
        &mut Vec::new(),
        &CreateOptions::default(),
        &mut |p| seen.push((p.done, p.total)),
    )
    .unwrap();
    assert!(
        seen.iter()
            .all(|(done, total)| *total == 100_000 && done <= total)
    );
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(seen.last(), Some(&(100_000, 100_000)));
}

#[test]
fn a_missing_root_is_a_clear_error() {
    let spec = BundleSpec {
        roots: vec![RootSpec::new("r", "/nonexistent/tandem-root")],
        ..BundleSpec::default()
    };
    let err = tandem_bundle::create(
        &spec,
        &mut Vec::new(),
        &CreateOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tandem-root"),
        "{err}"
    );
}
