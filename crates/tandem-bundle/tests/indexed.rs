//! Format version 2: gzip members with index headers, restored in one pass on
//! every core. Valid bundles are made by `create`, then their index headers
//! and members are corrupted (and the bundle sealed again, so only the reader's
//! checks stand between the lie and the disk); version 1 bundles still restore.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use common::{Raw, Scratch, assert_same, craft, gzip, indexed_gzip, manifest_for, seal, snapshot};
use proptest::prelude::*;
use tandem_bundle::format::{
    FORMAT_VERSION, MEMBER_DATA, MEMBER_HEADER_LEN, TRAILER_LEN, member_header, parse_member_header,
};
use tandem_bundle::{BundleSpec, CreateOptions, Error, LimitKind, Limits, Refusal, RootSpec};

/// Bytes that deflate barely shrinks (xorshift), so a few MiB make several members.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A bundle of root `r` made by `create`: a small file, then files that
/// spread over three members.
fn created() -> &'static Vec<u8> {
    static BUNDLE: OnceLock<Vec<u8>> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.conf"), b"port = 5000\n").unwrap();
        std::fs::write(
            root.join("sub/big.wav"),
            noise(2 * MEMBER_DATA as usize + 4321, 7),
        )
        .unwrap();
        std::fs::write(
            root.join("sub/tail.wav"),
            noise(MEMBER_DATA as usize / 2, 9),
        )
        .unwrap();
        let spec = BundleSpec {
            roots: vec![RootSpec::new("r", &root)],
            ..BundleSpec::default()
        };
        let mut out = Vec::new();
        tandem_bundle::create(
            &spec,
            &mut out,
            &CreateOptions::with_threads(2),
            &mut |_| {},
        )
        .unwrap();
        out
    })
}

/// The members of a bundle body: (offset, length).
fn members(body: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let (len, _) = parse_member_header(&body[at..]).expect("an index header");
        out.push((at, len as usize));
        at += len as usize;
    }
    out
}

fn body_of(bundle: &[u8]) -> Vec<u8> {
    bundle[..bundle.len() - TRAILER_LEN].to_vec()
}

/// The scratch tree as `snapshot` sees it, without the bundle file.
fn tree(s: &Scratch) -> BTreeMap<String, common::Node> {
    snapshot(&s.target())
}

/// Nothing of a refused restore is left: no staging, no journal, and the
/// state directory (which did not exist before) is gone again.
fn assert_nothing_left(s: &Scratch, what: &str) {
    for entry in std::fs::read_dir(s.target()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with(".tandem-stage"),
            "staging left behind {what}"
        );
    }
    assert!(!s.state().exists(), "state directory left behind {what}");
}

#[test]
fn new_bundles_are_version_2_with_an_index_header_on_every_member() {
    let bundle = created();
    let body = body_of(bundle);
    let found = members(&body);
    assert_eq!(found.len(), 3, "{found:?}");
    let manifest = tandem_bundle::verify_bytes(bundle, &BundleSpec::default()).unwrap();
    assert_eq!(manifest.version, FORMAT_VERSION);
    // Plain gzip still reads it as one stream (tar and gzip skip the extra field).
    let mut tar = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(&bundle[..]),
        &mut tar,
    )
    .unwrap();
    assert!(tar.len() > 2 * MEMBER_DATA as usize);
}

#[test]
fn gnu_tar_lists_a_version_2_bundle() {
    let s = Scratch::new();
    let path = s.write_bundle(created());
    let out = std::process::Command::new("tar")
        .arg("tzf")
        .arg(&path)
        .output()
        .expect("GNU tar is needed for this test (apt-get install tar)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("r/sub/big.wav"), "{listing}");
}

#[test]
fn a_version_2_bundle_restores_and_rolls_back() {
    let s = Scratch::new();
    let path = s.write_bundle(created());
    let report =
        tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {}).unwrap();
    assert!(report.changed() > 0);
    assert_eq!(
        std::fs::read(s.target().join("r/sub/big.wav")).unwrap(),
        noise(2 * MEMBER_DATA as usize + 4321, 7)
    );
    // keep.conf is not in the bundle: restore overlays.
    assert_eq!(
        std::fs::read(s.target().join("r/keep.conf")).unwrap(),
        b"old config\n"
    );
    // The same bundle again changes nothing but what the first restore set.
    let again =
        tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {}).unwrap();
    assert_eq!(again.changed(), 0, "{:?}", again.changes);
    tandem_bundle::rollback(&s.options(), &mut |_| {}).unwrap();
    tandem_bundle::rollback(&s.options(), &mut |_| {}).unwrap_err();
}

#[test]
fn a_version_1_bundle_still_restores_serially() {
    // As the writer before version 2 made them: plain gzip members, back to
    // back, and a manifest of version 1.
    let entries = [
        Raw::dir("r/"),
        Raw::file("r/keep.conf", b"from version 1\n"),
        Raw::file("r/big.wav", &noise(MEMBER_DATA as usize + 99, 3)),
    ];
    let manifest = manifest_for(&["r"], &entries);
    assert_eq!(manifest.version, 1);
    let json = serde_json::to_vec(&manifest).unwrap();
    let tar = common::tar_stream(&entries, Some(&json));
    let mut body = Vec::new();
    for chunk in tar.chunks(MEMBER_DATA as usize) {
        body.extend_from_slice(&gzip(chunk));
    }
    let bundle = seal(body);
    assert_eq!(
        tandem_bundle::verify_bytes(&bundle, &BundleSpec::default())
            .unwrap()
            .version,
        1
    );
    let s = Scratch::new();
    let path = s.write_bundle(&bundle);
    tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {}).unwrap();
    assert_eq!(
        std::fs::read(s.target().join("r/keep.conf")).unwrap(),
        b"from version 1\n"
    );
}

#[test]
fn the_manifest_version_must_match_the_members() {
    let entries = [Raw::dir("r/"), Raw::file("r/keep.conf", b"x\n")];
    let mut v2 = manifest_for(&["r"], &entries);
    v2.version = FORMAT_VERSION;
    let v1 = manifest_for(&["r"], &entries);
    let tar_v2 = common::tar_stream(&entries, Some(&serde_json::to_vec(&v2).unwrap()));
    let tar_v1 = common::tar_stream(&entries, Some(&serde_json::to_vec(&v1).unwrap()));
    for bundle in [seal(gzip(&tar_v2)), seal(indexed_gzip(&tar_v1))] {
        let s = Scratch::new();
        let old = tree(&s);
        let path = s.write_bundle(&bundle);
        let err = tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {})
            .unwrap_err();
        assert!(
            matches!(&err, Error::Refused { reason: Refusal::BadManifest(m), .. } if m.contains("index headers")),
            "{err:?}"
        );
        assert_same(&old, &tree(&s), "after a version mismatch");
    }
    // And the right pairs are accepted.
    tandem_bundle::verify_bytes(&seal(indexed_gzip(&tar_v2)), &BundleSpec::default()).unwrap();
    tandem_bundle::verify_bytes(&seal(gzip(&tar_v1)), &BundleSpec::default()).unwrap();
}

#[test]
fn index_headers_past_the_limits_are_refused_before_inflating() {
    let entries = [
        Raw::dir("r/"),
        Raw::file("r/zeros", &vec![0u8; 5 * MEMBER_DATA as usize]),
    ];
    let mut manifest = manifest_for(&["r"], &entries);
    manifest.version = FORMAT_VERSION;
    let tar = common::tar_stream(&entries, Some(&serde_json::to_vec(&manifest).unwrap()));
    let bundle = seal(indexed_gzip(&tar));
    let spec = BundleSpec {
        limits: Limits {
            max_total_bytes: 2 * u64::from(MEMBER_DATA),
            ..Limits::default()
        },
        ..BundleSpec::default()
    };
    let s = Scratch::new();
    let path = s.write_bundle(&bundle);
    let err = tandem_bundle::restore(&path, &spec, &s.options(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                kind: LimitKind::TotalBytes,
                decompressed: 0,
                ..
            }
        ),
        "{err:?}"
    );
    // Zeros deflate a thousandfold: past the grace of 4 MiB the ratio limit
    // stops them too, unread.
    let err = tandem_bundle::verify_bytes(&bundle, &BundleSpec::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                kind: LimitKind::Ratio,
                decompressed: 0,
                ..
            }
        ),
        "{err:?}"
    );
}

/// One lie in the index headers or the member layout.
#[derive(Debug, Clone)]
enum Lie {
    /// A member states another whole length.
    Len { member: usize, value: Value },
    /// A member states another uncompressed size.
    Data { member: usize, value: Value },
    /// A member is cut short by `by` bytes (its header unchanged).
    Cut { member: usize, by: usize },
    /// A member grows by `by` bytes of garbage (its header unchanged).
    Pad { member: usize, by: usize, fill: u8 },
    /// A member appears twice.
    Twice { member: usize },
    /// A member is left out.
    Drop { member: usize },
    /// Two members change places.
    Swap { a: usize, b: usize },
    /// A member's header is stated again inside its deflate data.
    Nested { member: usize, at: usize },
}

/// A hostile value for a length field, relative to the true one.
#[derive(Debug, Clone)]
enum Value {
    Plus(u32),
    Minus(u32),
    Exactly(u32),
    Next,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (1u32..600).prop_map(Value::Plus),
        (1u32..600).prop_map(Value::Minus),
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(33),
            Just(34),
            Just(MEMBER_DATA - 1),
            Just(MEMBER_DATA),
            Just(MEMBER_DATA + 1),
            Just(2 * MEMBER_DATA),
            Just(2 * MEMBER_DATA + 1),
            Just(u32::MAX),
        ]
        .prop_map(Value::Exactly),
        Just(Value::Next),
    ]
}

fn lie() -> impl Strategy<Value = Lie> {
    let m = 0usize..3;
    prop_oneof![
        (m.clone(), value()).prop_map(|(member, value)| Lie::Len { member, value }),
        (m.clone(), value()).prop_map(|(member, value)| Lie::Data { member, value }),
        (m.clone(), 1usize..300).prop_map(|(member, by)| Lie::Cut { member, by }),
        (m.clone(), 1usize..300, any::<u8>()).prop_map(|(member, by, fill)| Lie::Pad {
            member,
            by,
            fill
        }),
        m.clone().prop_map(|member| Lie::Twice { member }),
        m.clone().prop_map(|member| Lie::Drop { member }),
        (m.clone(), m.clone())
            .prop_filter("two members", |(a, b)| a != b)
            .prop_map(|(a, b)| Lie::Swap { a, b }),
        (m, 0usize..1000).prop_map(|(member, at)| Lie::Nested { member, at }),
    ]
}

fn apply(v: &Value, truth: u32, next: u32) -> u32 {
    match v {
        Value::Plus(d) => truth.wrapping_add(*d),
        Value::Minus(d) => truth.wrapping_sub(*d),
        Value::Exactly(x) => *x,
        Value::Next => next,
    }
}

/// The bundle with `lie` told, sealed again. `None` when the lie happens to
/// state the truth.
fn tell(lie: &Lie) -> Option<Vec<u8>> {
    let body = body_of(created());
    let found = members(&body);
    let mut parts: Vec<Vec<u8>> = found
        .iter()
        .map(|(at, len)| body[*at..at + len].to_vec())
        .collect();
    let header = |part: &[u8]| parse_member_header(part).unwrap();
    match lie {
        Lie::Len { member, value } => {
            let (len, data) = header(&parts[*member]);
            let next = parts.get(member + 1).map_or(len, |p| p.len() as u32);
            let lied = apply(value, len, next);
            if lied == len {
                return None;
            }
            parts[*member][..MEMBER_HEADER_LEN].copy_from_slice(&member_header(lied, data));
        }
        Lie::Data { member, value } => {
            let (len, data) = header(&parts[*member]);
            let next = parts.get(member + 1).map_or(data, |p| header(p).1);
            let lied = apply(value, data, next);
            if lied == data {
                return None;
            }
            parts[*member][..MEMBER_HEADER_LEN].copy_from_slice(&member_header(len, lied));
        }
        Lie::Cut { member, by } => {
            let part = &mut parts[*member];
            let at = MEMBER_HEADER_LEN + (part.len() - MEMBER_HEADER_LEN) / 2;
            part.drain(at..(at + by).min(part.len()));
        }
        Lie::Pad { member, by, fill } => {
            parts[*member].extend(std::iter::repeat_n(*fill, *by));
        }
        Lie::Twice { member } => {
            let copy = parts[*member].clone();
            parts.insert(*member, copy);
        }
        Lie::Drop { member } => {
            parts.remove(*member);
        }
        Lie::Swap { a, b } => parts.swap(*a, *b),
        Lie::Nested { member, at } => {
            let part = &mut parts[*member];
            let (_, data) = header(part);
            let at = MEMBER_HEADER_LEN + at % (part.len() - MEMBER_HEADER_LEN - 8);
            let inner = member_header(40, data);
            let end = (at + inner.len()).min(part.len());
            part[at..end].copy_from_slice(&inner[..end - at]);
        }
    }
    Some(seal(parts.concat()))
}

fn restore_is_refused(bundle: &[u8], what: &str) {
    let s = Scratch::new();
    let old = tree(&s);
    let path = s.write_bundle(bundle);
    let err = tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {})
        .expect_err(what);
    assert!(!err.to_string().is_empty());
    assert_same(&old, &tree(&s), &format!("{what}: tree after `{err}`"));
    assert_nothing_left(&s, &format!("{what}: after `{err}`"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Every lie in the index headers or the member layout is refused, by the
    /// in-memory check and by restore, and restore leaves the tree as it was.
    #[test]
    fn lying_members_are_refused_and_change_nothing(lie in lie()) {
        if let Some(bundle) = tell(&lie) {
            let what = format!("{lie:?}");
            let err = tandem_bundle::verify_bytes(&bundle, &BundleSpec::default());
            prop_assert!(err.is_err(), "{what} was accepted");
            restore_is_refused(&bundle, &what);
        }
    }
}

#[test]
fn a_flipped_byte_anywhere_is_a_checksum_mismatch() {
    // Not sealed again: the trailer catches it, even where the index header
    // or the inflating would have failed first.
    let bundle = created();
    let body_len = bundle.len() - TRAILER_LEN;
    for at in [0usize, 5, 17, 21, 24, 1000, body_len / 2, body_len - 1] {
        let mut bad = bundle.clone();
        bad[at] ^= 0x10;
        let s = Scratch::new();
        let path = s.write_bundle(&bad);
        let err = tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "byte {at}: {err:?}");
        assert_nothing_left(&s, &format!("byte {at}"));
    }
}

#[test]
fn a_refusal_at_the_end_removes_what_streamed_into_staging() {
    // Every file streams into staging before the manifest, at the end, says
    // one of them is wrong.
    let mut entries = vec![
        Raw::dir("r/"),
        Raw::file("r/keep.conf", b"replaced\n"),
        Raw::file("r/big.wav", &noise(MEMBER_DATA as usize + 5, 11)),
    ];
    let mut manifest = manifest_for(&["r"], &entries);
    manifest.version = FORMAT_VERSION;
    entries[2] = Raw::file("r/big.wav", &noise(MEMBER_DATA as usize + 5, 12));
    let tar = common::tar_stream(&entries, Some(&serde_json::to_vec(&manifest).unwrap()));
    let bundle = seal(indexed_gzip(&tar));
    let s = Scratch::new();
    let old = tree(&s);
    std::fs::create_dir_all(s.state()).unwrap();
    let path = s.write_bundle(&bundle);
    let err = tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused { reason: Refusal::ContentMismatch, entry } if entry == "r/big.wav"),
        "{err:?}"
    );
    assert_same(&old, &tree(&s), "after the refusal");
    // The state directory was there; what the run made in it is gone.
    assert_eq!(walk(&s.state()), Vec::<String>::new());
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{rel}{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                stack.push((entry.path(), format!("{name}/")));
            }
            out.push(name);
        }
    }
    out.sort();
    out
}

#[test]
fn crafted_bundles_restore_through_both_readers() {
    // The same entries as version 1 and as version 2 give the same tree.
    let entries = [
        Raw::dir("r/"),
        Raw::file("r/keep.conf", b"both\n"),
        Raw::dir("r/sub/"),
        Raw::file("r/sub/prompt.wav", &noise(MEMBER_DATA as usize * 2 + 1, 5)),
        Raw::symlink("r/link", "sub/prompt.wav"),
        Raw::hardlink("r/again.conf", "r/keep.conf"),
    ];
    let v1 = craft(&["r"], &entries);
    let mut manifest = manifest_for(&["r"], &entries);
    manifest.version = FORMAT_VERSION;
    let tar = common::tar_stream(&entries, Some(&serde_json::to_vec(&manifest).unwrap()));
    let v2 = seal(indexed_gzip(&tar));
    let mut trees = Vec::new();
    for bundle in [v1, v2] {
        let s = Scratch::new();
        let path = s.write_bundle(&bundle);
        tandem_bundle::restore(&path, &BundleSpec::default(), &s.options(), &mut |_| {}).unwrap();
        let mut restored = tree(&s);
        // The target directory itself: its mtime is the time of the run.
        restored.remove("");
        trees.push(restored);
    }
    assert_same(&trees[0], &trees[1], "version 1 against version 2");
}
