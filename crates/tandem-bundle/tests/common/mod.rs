//! Helpers shared by the integration tests (and the fuzz target): tree
//! snapshots, tree building, hand-crafted bundles, and the generator of hostile
//! bundles with the invariant every restore must keep (`generate`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tandem_bundle::format::{EntryKind, Manifest, ManifestEntry, ManifestRoot, trailer};

pub mod generate;

/// What a user would compare between two trees: type, bytes, link target, mode,
/// mtime to the nanosecond, owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
        mtime: (i64, i64),
        owner: (u32, u32),
    },
    File {
        bytes: Vec<u8>,
        mode: u32,
        mtime: (i64, i64),
        owner: (u32, u32),
        inode_group: Option<u64>,
    },
    Symlink {
        target: PathBuf,
        mtime: (i64, i64),
        owner: (u32, u32),
    },
    Other(String),
}

/// Every path under `root` (relative, "" for `root` itself) and what it is.
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, u64> = BTreeMap::new();
    walk(root, "", &mut out, &mut inodes);
    out
}

fn walk(path: &Path, rel: &str, out: &mut BTreeMap<String, Node>, inodes: &mut BTreeMap<u64, u64>) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let mtime = (meta.mtime(), meta.mtime_nsec());
    let owner = (meta.uid(), meta.gid());
    let mode = meta.permissions().mode() & 0o7777;
    let node = if meta.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let child = if rel.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", name.to_string_lossy())
            };
            walk(&path.join(&name), &child, out, inodes);
        }
        Node::Dir { mode, mtime, owner }
    } else if meta.is_file() {
        // Hard links: files sharing an inode get the same group number.
        let inode_group = (meta.nlink() > 1).then(|| {
            let next = inodes.len() as u64;
            *inodes.entry(meta.ino()).or_insert(next)
        });
        Node::File {
            bytes: std::fs::read(path).unwrap(),
            mode,
            mtime,
            owner,
            inode_group,
        }
    } else if meta.file_type().is_symlink() {
        Node::Symlink {
            target: std::fs::read_link(path).unwrap(),
            mtime,
            owner,
        }
    } else {
        Node::Other(format!("{:?}", meta.file_type()))
    };
    out.insert(rel.to_owned(), node);
}

/// Asserts two snapshots are equal, naming the first difference.
pub fn assert_same(left: &BTreeMap<String, Node>, right: &BTreeMap<String, Node>, what: &str) {
    for (path, node) in left {
        match right.get(path) {
            None => panic!("{what}: `{path}` is missing ({node:?})"),
            Some(other) if other != node => {
                panic!("{what}: `{path}` differs:\n  {node:?}\n  {other:?}")
            }
            Some(_) => {}
        }
    }
    for path in right.keys() {
        assert!(left.contains_key(path), "{what}: `{path}` is extra");
    }
}

/// Sets a path's mtime without following a symlink.
pub fn set_mtime(path: &Path, secs: i64, nsec: i64) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::new(secs, nsec),
        &TimeSpec::new(secs, nsec),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes a file with mode and mtime.
pub fn file(path: &Path, bytes: &[u8], mode: u32, mtime: i64) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
    set_mode(path, mode);
    set_mtime(path, mtime, 0);
}

/// Copies a tree exactly (types, bytes, modes, mtimes, owners, links).
pub fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// One hand-made tar entry, written without any of the tar writer's checks.
#[derive(Clone)]
pub struct Raw {
    pub path: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: Option<Vec<u8>>,
    pub mtime: u64,
    /// Owner as header and manifest state it; the manifest's name, if any.
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
}

impl Raw {
    pub fn dir(path: &str) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            kind: tar::EntryType::Directory,
            mode: 0o755,
            data: vec![],
            link: None,
            mtime: 1_600_000_000,
            uid: 0,
            gid: 0,
            user: None,
        }
    }
    pub fn file(path: &str, data: &[u8]) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            mode: 0o644,
            data: data.to_vec(),
            link: None,
            mtime: 1_600_000_000,
            uid: 0,
            gid: 0,
            user: None,
        }
    }
    pub fn symlink(path: &str, target: &str) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            kind: tar::EntryType::Symlink,
            mode: 0o777,
            data: vec![],
            link: Some(target.as_bytes().to_vec()),
            mtime: 1_600_000_000,
            uid: 0,
            gid: 0,
            user: None,
        }
    }
    pub fn hardlink(path: &str, target: &str) -> Raw {
        Raw {
            kind: tar::EntryType::Link,
            mode: 0o644,
            ..Raw::symlink(path, target)
        }
    }
    pub fn with_kind(mut self, kind: tar::EntryType) -> Raw {
        self.kind = kind;
        self
    }
    pub fn with_mode(mut self, mode: u32) -> Raw {
        self.mode = mode;
        self
    }
    pub fn with_owner(mut self, uid: u32, gid: u32, user: Option<&str>) -> Raw {
        self.uid = uid;
        self.gid = gid;
        self.user = user.map(str::to_owned);
        self
    }

    /// The manifest entry that matches this raw entry exactly.
    pub fn manifest_entry(&self) -> ManifestEntry {
        let path = String::from_utf8_lossy(&self.path)
            .trim_end_matches('/')
            .to_owned();
        let kind = match self.kind {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            _ => EntryKind::File,
        };
        ManifestEntry {
            path,
            kind,
            size: self.data.len() as u64,
            mode: self.mode,
            mtime: self.mtime as i64,
            mtime_nsec: 0,
            uid: self.uid,
            gid: self.gid,
            user: self.user.clone(),
            group: None,
            sha256: (kind == EntryKind::File).then(|| hex::encode(Sha256::digest(&self.data))),
            link: self
                .link
                .as_ref()
                .map(|l| String::from_utf8_lossy(l).into_owned()),
        }
    }
}

/// The manifest that matches `entries`, with roots `roots`.
pub fn manifest_for(roots: &[&str], entries: &[Raw]) -> Manifest {
    Manifest {
        format: "tandem-bundle".into(),
        version: 1,
        roots: roots
            .iter()
            .map(|r| ManifestRoot {
                name: (*r).into(),
                path: format!("/srv/{r}"),
            })
            .collect(),
        entries: entries.iter().map(Raw::manifest_entry).collect(),
        remove: vec![],
    }
}

/// The uncompressed tar stream of `entries` followed by `manifest` (as JSON).
/// Paths and link targets longer than a header holds go into GNU long name
/// (`L`) and long link (`K`) records, as GNU tar writes them.
pub fn tar_stream(entries: &[Raw], manifest: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut all: Vec<Raw> = entries.to_vec();
    if let Some(json) = manifest {
        all.push(Raw::file(".tandem-bundle/manifest.json", json));
    }
    for raw in &all {
        let mut header = tar::Header::new_gnu();
        if raw.path.len() > 100 {
            long_record(&mut out, tar::EntryType::GNULongName, &raw.path);
        }
        let name = &mut header.as_old_mut().name;
        let n = raw.path.len().min(name.len());
        name[..n].copy_from_slice(&raw.path[..n]);
        if let Some(link) = &raw.link {
            if link.len() > 100 {
                long_record(&mut out, tar::EntryType::GNULongLink, link);
            }
            let slot = &mut header.as_old_mut().linkname;
            let n = link.len().min(slot.len());
            slot[..n].copy_from_slice(&link[..n]);
        }
        header.set_entry_type(raw.kind);
        header.set_mode(raw.mode);
        header.set_uid(raw.uid.into());
        header.set_gid(raw.gid.into());
        header.set_mtime(raw.mtime);
        header.set_size(raw.data.len() as u64);
        header.set_cksum();
        block(&mut out, header.as_bytes(), &raw.data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A GNU long name or long link record holding `value` and its NUL.
pub fn long_record(out: &mut Vec<u8>, kind: tar::EntryType, value: &[u8]) {
    let mut data = value.to_vec();
    data.push(0);
    extension_record(out, kind, &data, data.len() as u64);
}

/// An extension record (`L`, `K`, `x`, `g`) with `data`, its header claiming
/// `declared` bytes (a lie when they differ).
pub fn extension_record(out: &mut Vec<u8>, kind: tar::EntryType, data: &[u8], declared: u64) {
    let mut header = tar::Header::new_gnu();
    let label = b"././@LongLink";
    header.as_old_mut().name[..label.len()].copy_from_slice(label);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(declared);
    header.set_mtime(0);
    header.set_cksum();
    block(out, header.as_bytes(), data);
}

/// A header and its data, padded to whole 512-byte blocks.
fn block(out: &mut Vec<u8>, header: &[u8; 512], data: &[u8]) {
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// `data` as format version 2 writes it: gzip members of `MEMBER_DATA` bytes
/// (the last one shorter), each with its index header.
pub fn indexed_gzip(data: &[u8]) -> Vec<u8> {
    use tandem_bundle::format::{MEMBER_DATA, MEMBER_HEADER_LEN, member_header};
    let mut out = Vec::new();
    for chunk in data.chunks(MEMBER_DATA as usize) {
        let mut member = vec![0u8; MEMBER_HEADER_LEN];
        let mut enc = flate2::write::DeflateEncoder::new(member, flate2::Compression::default());
        enc.write_all(chunk).unwrap();
        member = enc.finish().unwrap();
        let mut crc = flate2::Crc::new();
        crc.update(chunk);
        member.extend_from_slice(&crc.sum().to_le_bytes());
        member.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        let header = member_header(member.len() as u32, chunk.len() as u32);
        member[..MEMBER_HEADER_LEN].copy_from_slice(&header);
        out.extend_from_slice(&member);
    }
    out
}

/// `body` with a valid tandem trailer: the checksum over the whole is right, so
/// only the inner checks can refuse it.
pub fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let digest: [u8; 32] = Sha256::digest(&body).into();
    body.extend_from_slice(&trailer(&digest));
    body
}

/// A sealed bundle of `entries` with the matching manifest (roots `roots`).
pub fn craft(roots: &[&str], entries: &[Raw]) -> Vec<u8> {
    craft_with(entries, &manifest_for(roots, entries))
}

/// A sealed bundle of `entries` with the given manifest.
pub fn craft_with(entries: &[Raw], manifest: &Manifest) -> Vec<u8> {
    let json = serde_json::to_vec(manifest).unwrap();
    seal(gzip(&tar_stream(entries, Some(&json))))
}

/// A scratch area: a target directory with an existing root `r` holding a few
/// files, a state directory, and a place for bundles.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let s = Scratch { dir };
        std::fs::create_dir_all(s.target()).unwrap();
        file(
            &s.target().join("r/keep.conf"),
            b"old config\n",
            0o644,
            1_500_000_000,
        );
        file(
            &s.target().join("r/sub/prompt.wav"),
            b"RIFF old",
            0o600,
            1_500_000_001,
        );
        std::os::unix::fs::symlink("keep.conf", s.target().join("r/link")).unwrap();
        set_mtime(&s.target().join("r/link"), 1_500_000_002, 0);
        set_mtime(&s.target().join("r/sub"), 1_500_000_003, 0);
        set_mtime(&s.target().join("r"), 1_500_000_004, 0);
        set_mtime(&s.target(), 1_500_000_005, 0);
        s
    }
    pub fn target(&self) -> PathBuf {
        self.dir.path().join("target")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn write_bundle(&self, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join("bundle.tar.gz");
        std::fs::write(&path, bytes).unwrap();
        path
    }
    pub fn options(&self) -> tandem_bundle::RestoreOptions {
        tandem_bundle::RestoreOptions::new(self.state()).under(self.target())
    }
}

/// A test that needs root and does not have it: fails under `CI=true`, else
/// says so on stderr (never skipped in silence).
pub fn need_root(what: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test needs root: {what}"
    );
    eprintln!("not root: {what}; the check was not made");
}
