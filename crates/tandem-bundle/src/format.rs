//! The bundle format: manifest, trailer, and the rules for entry paths and links.
//!
//! A bundle is a gzip file (one or more members) holding a tar stream, followed by
//! one empty gzip member, the *trailer*, whose extra field carries the sha256 of
//! every byte before it. GNU `tar xzf` reads it as a plain `.tar.gz`.
//!
//! Version 2 (written since issue 24) cuts the tar stream into members of
//! [`MEMBER_DATA`] bytes (the last one shorter) and gives each member an *index*
//! header: the gzip extra field holds a subfield `Tm` with the member's whole
//! length in bytes and its uncompressed length (see [`member_header`]). A
//! reader finds every member from these lengths without decoding, so it can
//! inflate members on several cores. gzip and tar skip extra fields. Version 1
//! bundles have no index and are read in one serial stream; the manifest's
//! `version` must match what the members say.
//!
//! The tar stream holds, in a deterministic order, one directory entry per root
//! (`<root>/`), then the root's directories, files and links
//! (`<root>/<path inside the root>`), parents before children, and last the
//! manifest, `.tandem-bundle/manifest.json`, which lists every entry with its
//! type, size, mode, mtime, owner, link target and sha256.

use serde::{Deserialize, Serialize};

use crate::error::Refusal;

/// Path of the manifest inside the tar stream (always the last entry).
pub const MANIFEST_PATH: &str = ".tandem-bundle/manifest.json";

/// Value of [`Manifest::format`].
pub const FORMAT_NAME: &str = "tandem-bundle";

/// Current [`Manifest::version`]: 2, members with index headers.
pub const FORMAT_VERSION: u32 = 2;

/// The first [`Manifest::version`]: members without index headers, read serially.
pub const FORMAT_VERSION_SERIAL: u32 = 1;

/// Uncompressed bytes in every member of a version 2 bundle but the last.
pub const MEMBER_DATA: u32 = 1 << 20;

/// Length of a member's index header (gzip header with the `Tm` extra field).
pub const MEMBER_HEADER_LEN: usize = 24;

/// Shortest possible member: its header, an empty deflate block, CRC and size.
pub const MEMBER_MIN_LEN: u32 = MEMBER_HEADER_LEN as u32 + 2 + 8;

/// Longest member a reader accepts: deflate never grows [`MEMBER_DATA`] bytes
/// by more than a few hundred bytes, so this leaves a wide margin.
pub const MEMBER_MAX_LEN: u32 = 2 * MEMBER_DATA;

/// The gzip header of a version 2 member: `len` is the whole member (header,
/// deflate data, CRC and size), `data` the uncompressed bytes in it.
///
/// Fixed bytes: magic, deflate, `FLG` = `FEXTRA` only, zero mtime, `XFL` 0, `OS`
/// 255, `XLEN` 12, subfield `Tm` of 8 bytes: `len` and `data`, little-endian.
pub fn member_header(len: u32, data: u32) -> [u8; MEMBER_HEADER_LEN] {
    let mut out = [0u8; MEMBER_HEADER_LEN];
    let fixed: [u8; 16] = [
        0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, // ID, CM, FLG=FEXTRA, MTIME, XFL, OS
        12, 0, // XLEN
        b'T', b'm', 8, 0, // subfield id and length
    ];
    let parts: [&[u8]; 3] = [&fixed, &len.to_le_bytes(), &data.to_le_bytes()];
    let mut at = 0;
    for part in parts {
        for (slot, byte) in out.iter_mut().skip(at).zip(part) {
            *slot = *byte;
        }
        at += part.len();
    }
    out
}

/// The `(len, data)` a member index header states, or `None` when `bytes` do
/// not start with one. The values are as hostile as the rest of the bundle:
/// the reader checks them (see `members.rs`).
pub fn parse_member_header(bytes: &[u8]) -> Option<(u32, u32)> {
    let head = bytes.get(..MEMBER_HEADER_LEN)?;
    let len = u32::from_le_bytes(head.get(16..20)?.try_into().ok()?);
    let data = u32::from_le_bytes(head.get(20..24)?.try_into().ok()?);
    (member_header(len, data) == head).then_some((len, data))
}

/// Longest file name component a restore accepts, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// Longest entry path, symlink target or path on disk a restore accepts, in
/// bytes (Linux `PATH_MAX` less its terminating NUL).
pub const MAX_PATH_BYTES: usize = 4095;

/// Length in bytes of the trailer at the end of every bundle.
pub const TRAILER_LEN: usize = 74;

/// Label inside the trailer's gzip extra field, before the sha256.
const TRAILER_LABEL: &[u8; 16] = b"tandem-bundle/1\0";

/// The trailer closing a bundle whose preceding bytes hash to `digest`.
///
/// It is a valid, empty gzip member: gzip header with only `FEXTRA` set, an extra
/// subfield `Tb` holding a label and the digest, an empty deflate block, and a
/// zero CRC and size. Every byte of it is fixed except the digest, so a reader
/// compares it byte for byte.
pub fn trailer(digest: &[u8; 32]) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    let head: [u8; 16] = [
        0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, // ID, CM, FLG=FEXTRA, MTIME, XFL, OS
        52, 0, // XLEN
        b'T', b'b', 48, 0, // subfield id and length
    ];
    let tail: [u8; 10] = [0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]; // empty block, CRC32, ISIZE
    let parts: [&[u8]; 4] = [&head, TRAILER_LABEL, digest, &tail];
    let mut at = 0;
    for part in parts {
        for (slot, byte) in out.iter_mut().skip(at).zip(part) {
            *slot = *byte;
        }
        at += part.len();
    }
    out
}

/// The digest a trailer carries, or `None` when the bytes are not a trailer.
pub fn parse_trailer(bytes: &[u8]) -> Option<[u8; 32]> {
    let digest: [u8; 32] = bytes.get(32..64)?.try_into().ok()?;
    (bytes.len() == TRAILER_LEN && trailer(&digest) == bytes).then_some(digest)
}

/// The manifest stored as the last entry of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`], or [`FORMAT_VERSION_SERIAL`] in bundles written
    /// before member index headers.
    pub version: u32,
    /// The roots, in bundle order.
    pub roots: Vec<ManifestRoot>,
    /// Every tar entry except the manifest, in archive order.
    pub entries: Vec<ManifestEntry>,
    /// Backup bundles only: entries a rollback removes (they did not exist
    /// before the restore), deepest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A root of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRoot {
    /// The root's name, the first component of its entries.
    pub name: String,
    /// The directory it was read from (information; restore maps by name).
    pub path: String,
}

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier file of the bundle.
    Hardlink,
}

/// One entry of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// `<root>` or `<root>/<path inside the root>`, no trailing slash.
    pub path: String,
    /// File type.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Content size in bytes (0 for everything but files).
    pub size: u64,
    /// Permission bits, including setuid, setgid and sticky.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Owner's numeric id.
    pub uid: u32,
    /// Group's numeric id.
    pub gid: u32,
    /// Owner's name, when it had one; preferred over `uid` on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group's name, when it had one; preferred over `gid` on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Content sha256 (hex), files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlink target, or for hard links the entry path of the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// An entry path split into its root name and the components inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryPath {
    /// The canonical form: components joined with `/`.
    pub(crate) full: String,
    /// Number of components (1 for a root directory).
    pub(crate) depth: usize,
}

impl EntryPath {
    /// The root name (first component).
    pub(crate) fn root(&self) -> &str {
        self.full.split('/').next().unwrap_or("")
    }

    /// The path inside the root (empty for the root itself).
    pub(crate) fn rel(&self) -> &str {
        self.full.split_once('/').map_or("", |(_, rel)| rel)
    }

    /// The parent entry path, `None` for a root.
    pub(crate) fn parent(&self) -> Option<&str> {
        self.full.rsplit_once('/').map(|(parent, _)| parent)
    }
}

/// Checks a raw entry path from a tar header: relative, UTF-8, no `..`, no empty
/// or `.` components, no component over [`MAX_NAME_BYTES`] and no more than
/// [`MAX_PATH_BYTES`] in all. One trailing `/` (directories) is dropped.
pub(crate) fn parse_entry_path(raw: &[u8]) -> Result<EntryPath, Refusal> {
    if raw.len() > MAX_PATH_BYTES + 1 {
        return Err(Refusal::TooLong(format!(
            "path of {} bytes (at most {MAX_PATH_BYTES})",
            raw.len()
        )));
    }
    if raw.first() == Some(&b'/') {
        return Err(Refusal::AbsolutePath);
    }
    if raw.split(|b| *b == b'/').any(|c| c == b"..") {
        return Err(Refusal::DotDot);
    }
    let text = std::str::from_utf8(raw).map_err(|_| Refusal::BadPath("not UTF-8"))?;
    let text = text.strip_suffix('/').unwrap_or(text);
    if text.is_empty() {
        return Err(Refusal::BadPath("empty"));
    }
    if text.contains('\0') {
        return Err(Refusal::BadPath("NUL byte"));
    }
    let mut depth = 0;
    for component in text.split('/') {
        match component {
            "" => return Err(Refusal::BadPath("empty component")),
            "." => return Err(Refusal::BadPath("`.` component")),
            long if long.len() > MAX_NAME_BYTES => {
                return Err(Refusal::TooLong(format!(
                    "name of {} bytes (at most {MAX_NAME_BYTES})",
                    long.len()
                )));
            }
            _ => depth += 1,
        }
    }
    if text.len() > MAX_PATH_BYTES {
        return Err(Refusal::TooLong(format!(
            "path of {} bytes (at most {MAX_PATH_BYTES})",
            text.len()
        )));
    }
    Ok(EntryPath {
        full: text.to_owned(),
        depth,
    })
}

/// Checks that a symlink at `entry` with this target stays inside its root.
///
/// The target must be relative; it may climb with leading `..` components no
/// higher than the root, then only descend. A `..` after a name is refused
/// because the name may itself be a link, which would make a lexical check lie.
pub(crate) fn check_symlink_target(entry: &EntryPath, target: &[u8]) -> Result<String, Refusal> {
    let text =
        std::str::from_utf8(target).map_err(|_| Refusal::BadPath("link target is not UTF-8"))?;
    if text.is_empty() || text.contains('\0') {
        return Err(Refusal::BadPath("empty link target"));
    }
    if text.starts_with('/') {
        return Err(Refusal::AbsoluteLink(text.to_owned()));
    }
    if text.len() > MAX_PATH_BYTES {
        return Err(Refusal::TooLong(format!(
            "link target of {} bytes (at most {MAX_PATH_BYTES})",
            text.len()
        )));
    }
    // The link's directory is `depth - 1` components deep; the root is depth 1.
    let room = entry.depth.saturating_sub(2);
    let mut up = 0usize;
    let mut descended = false;
    for component in text.split('/') {
        match component {
            "" | "." => {}
            ".." if descended => return Err(Refusal::LinkEscapes(text.to_owned())),
            ".." => up += 1,
            _ => descended = true,
        }
    }
    if up > room {
        return Err(Refusal::LinkEscapes(text.to_owned()));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> EntryPath {
        parse_entry_path(s.as_bytes()).unwrap()
    }

    #[test]
    fn trailer_round_trips_and_rejects_any_change() {
        let digest = [7u8; 32];
        let t = trailer(&digest);
        assert_eq!(parse_trailer(&t), Some(digest));
        for i in 0..TRAILER_LEN {
            let mut bad = t;
            bad[i] ^= 1;
            let parsed = parse_trailer(&bad);
            assert!(parsed.is_none() || parsed != Some(digest), "byte {i}");
        }
        assert_eq!(parse_trailer(&t[..TRAILER_LEN - 1]), None);
    }

    #[test]
    fn trailer_is_an_empty_gzip_member() {
        use std::io::Read;
        let t = trailer(&[1u8; 32]);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&t[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn entry_paths() {
        assert_eq!(parse_entry_path(b"/etc/passwd"), Err(Refusal::AbsolutePath));
        assert_eq!(parse_entry_path(b"a/../b"), Err(Refusal::DotDot));
        assert_eq!(parse_entry_path(b".."), Err(Refusal::DotDot));
        assert_eq!(
            parse_entry_path(b"a//b"),
            Err(Refusal::BadPath("empty component"))
        );
        assert_eq!(
            parse_entry_path(b"./a"),
            Err(Refusal::BadPath("`.` component"))
        );
        assert_eq!(
            parse_entry_path(b"a/\xff"),
            Err(Refusal::BadPath("not UTF-8"))
        );
        let p = path("web/a b/ü.wav");
        assert_eq!(
            (p.root(), p.rel(), p.parent(), p.depth),
            ("web", "a b/ü.wav", Some("web/a b"), 3)
        );
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            parse_entry_path(format!("r/{long}").as_bytes()),
            Err(Refusal::TooLong(_))
        ));
        let deep = format!("r{}", "/abcdefgh".repeat(MAX_PATH_BYTES / 9 + 1));
        assert!(matches!(
            parse_entry_path(deep.as_bytes()),
            Err(Refusal::TooLong(_))
        ));
        let fits = format!("r/{}", "a".repeat(MAX_NAME_BYTES));
        assert!(parse_entry_path(fits.as_bytes()).is_ok());
        let root = path("web/");
        assert_eq!(
            (root.root(), root.rel(), root.parent(), root.depth),
            ("web", "", None, 1)
        );
    }

    #[test]
    fn symlink_targets() {
        let at = path("r/a/b/link"); // directory r/a/b: two levels below the root
        assert!(check_symlink_target(&at, b"x").is_ok());
        assert!(check_symlink_target(&at, b"../../x/y").is_ok());
        assert!(check_symlink_target(&at, b"./../.").is_ok());
        assert!(matches!(
            check_symlink_target(&at, b"../../../x"),
            Err(Refusal::LinkEscapes(_))
        ));
        assert!(matches!(
            check_symlink_target(&at, b"x/../y"),
            Err(Refusal::LinkEscapes(_))
        ));
        assert!(matches!(
            check_symlink_target(&at, b"/etc"),
            Err(Refusal::AbsoluteLink(_))
        ));
        let top = path("r/link");
        assert!(check_symlink_target(&top, b".").is_ok());
        assert!(matches!(
            check_symlink_target(&top, b".."),
            Err(Refusal::LinkEscapes(_))
        ));
    }
}
