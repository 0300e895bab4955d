//! The site key file: made atomically with mode 0600, never replaced, and every bad file
//! is a clear error naming it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tandem_peer::{Error, KeyFileProblem, SiteKey, keygen};

fn load_error(path: &Path) -> (String, KeyFileProblem) {
    match SiteKey::load(path) {
        Err(e @ Error::KeyFile { .. }) => {
            let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            let Error::KeyFile {
                path: named,
                problem,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(named, path, "the error names the file");
            assert!(text.contains(&path.display().to_string()), "{text}");
            (text, problem)
        }
        other => panic!("expected a key file error, got {other:?}"),
    }
}

fn write_with_mode(path: &Path, content: &str, mode: u32) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn keygen_writes_a_0600_hex_file_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.key");
    let key = keygen(&path).unwrap();

    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n'));
    assert!(text.trim_end().chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(SiteKey::load(&path).unwrap(), key);

    // Nothing else is left in the directory (no temporary file).
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["site.key"]);

    // Two runs make two different keys.
    let other = keygen(&dir.path().join("other.key")).unwrap();
    assert_ne!(other, key);
    assert_ne!(other.fingerprint(), key.fingerprint());
}

#[test]
fn keygen_never_replaces_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.key");
    let key = keygen(&path).unwrap();
    match keygen(&path) {
        Err(Error::KeyFile {
            problem: KeyFileProblem::Exists,
            path: named,
        }) => assert_eq!(named, path),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(
        SiteKey::load(&path).unwrap(),
        key,
        "the old key is untouched"
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// A fresh server has no `/etc/tandem`: keygen makes it, owner-only.
#[test]
fn keygen_into_a_missing_directory_makes_it_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/tandem/site.key");
    keygen(&path).unwrap();
    let mode = std::fs::metadata(dir.path().join("etc/tandem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn keygen_where_no_directory_can_be_made_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    let path = dir.path().join("file/dir/site.key");
    match keygen(&path) {
        Err(Error::KeyFile {
            problem: KeyFileProblem::Write(_),
            ..
        }) => {}
        other => panic!("expected a write error, got {other:?}"),
    }
}

#[test]
fn a_missing_key_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (text, problem) = load_error(&dir.path().join("site.key"));
    assert!(matches!(problem, KeyFileProblem::Missing), "{problem:?}");
    assert!(text.contains("does not exist"), "{text}");
}

#[test]
fn a_short_key_file_says_how_long_it_should_be() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.key");
    write_with_mode(&path, "0123456789abcdef\n", 0o600);
    let (text, problem) = load_error(&path);
    assert!(
        matches!(problem, KeyFileProblem::Malformed(_)),
        "{problem:?}"
    );
    assert!(text.contains("expected 64 hexadecimal digits"), "{text}");
    assert!(text.contains("found 16"), "{text}");
}

#[test]
fn a_malformed_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.key");
    for content in [
        "z".repeat(64),
        String::new(),
        "00".repeat(33),
        format!("{} extra", "ab".repeat(32)),
    ] {
        write_with_mode(&path, &content, 0o600);
        let (text, problem) = load_error(&path);
        assert!(
            matches!(problem, KeyFileProblem::Malformed(_)),
            "{content:?}: {problem:?}"
        );
        assert!(text.contains("malformed"), "{text}");
    }
    fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
    let (_, problem) = load_error(&path);
    assert!(
        matches!(problem, KeyFileProblem::Malformed(_)),
        "{problem:?}"
    );
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.key");
    let key = SiteKey::from_bytes([0x5a; 32]);
    write_with_mode(&path, &key.to_text(), 0o644);
    let (text, problem) = load_error(&path);
    assert!(
        matches!(problem, KeyFileProblem::Permissions { mode: 0o644 }),
        "{problem:?}"
    );
    assert!(text.contains("0644") && text.contains("0600"), "{text}");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(SiteKey::load(&path).unwrap(), key);
}
