//! Reading bundles: the checksum over the whole, then a streaming pass that
//! enforces the limits while it decompresses and checks every entry against
//! the rules and the manifest. Nothing here writes to disk. Version 2 bundles
//! are inflated member by member on every core ([`crate::members`]); version
//! 1 bundles in one serial stream.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use globset::GlobSet;
use sha2::{Digest, Sha256};

use crate::create::STAGE_PREFIX;
use crate::error::{Error, LimitKind, Refusal, Result};
use crate::format::{
    EntryKind, EntryPath, FORMAT_NAME, FORMAT_VERSION, FORMAT_VERSION_SERIAL, MANIFEST_PATH,
    MAX_PATH_BYTES, Manifest, ManifestEntry, TRAILER_LEN, check_symlink_target, parse_entry_path,
    parse_trailer,
};
use crate::members::{Index, Parallel};
use crate::spec::{BundleSpec, Limits, check_root_name};
use crate::{Phase, Progress};

/// Read buffer size for content.
const BUF: usize = 256 * 1024;

/// What a reader accepts.
pub(crate) struct Policy<'a> {
    pub(crate) limits: Limits,
    pub(crate) allow_setid: bool,
    /// Symlinks must stay inside their root (off only for local backups).
    pub(crate) strict_links: bool,
    /// Config class `node` globs: matching entries are refused.
    pub(crate) node: Option<&'a GlobSet>,
    /// Whether files and directories may be writable by every user.
    pub(crate) allow_world_writable: bool,
    /// Whether the manifest may carry a `remove` list (backups only).
    pub(crate) allow_remove: bool,
}

impl<'a> Policy<'a> {
    /// The policy for a bundle received from elsewhere, from the local spec.
    pub(crate) fn received(spec: &BundleSpec, node: &'a GlobSet) -> Self {
        Policy {
            limits: spec.limits,
            allow_setid: spec.allow_setid,
            strict_links: true,
            node: Some(node),
            allow_world_writable: spec.allow_world_writable,
            allow_remove: false,
        }
    }
}

/// Checks a whole bundle held in memory against `spec`'s policy and returns its
/// manifest (entries in archive order). Writes nothing; meant for tools and
/// fuzzing.
pub fn verify_bytes(bytes: &[u8], spec: &BundleSpec) -> Result<Manifest> {
    let compiled = spec.compile()?;
    let policy = Policy::received(spec, &compiled.node);
    let (_, body_len) = check_digest(bytes, bytes.len() as u64, &mut |_| {})?;
    let body = bytes
        .get(..usize::try_from(body_len).unwrap_or(usize::MAX))
        .unwrap_or_default();
    let index = crate::members::index(&body.to_vec(), body_len, &policy.limits)?;
    match &index {
        Some(index) => {
            let mut inflater =
                Parallel::spawn(Arc::new(body.to_vec()), index, Parallel::threads(), false);
            let counter = inflater.counter();
            verify_body(&mut inflater, counter, body_len, true, &policy, &mut |_| {})
        }
        None => {
            let (decompressed, compressed) = crate::inflate::inline(body);
            verify_body(
                decompressed,
                compressed,
                body_len,
                false,
                &policy,
                &mut |_| {},
            )
        }
    }
}

/// Checks a bundle file against `spec`'s policy and returns its manifest.
/// Writes nothing.
pub fn verify_file(path: &std::path::Path, spec: &BundleSpec) -> Result<Manifest> {
    let compiled = spec.compile()?;
    let policy = Policy::received(spec, &compiled.node);
    Ok(verify_path(path, &policy, &mut |_| {})?.manifest)
}

/// A bundle file that passed every check.
pub(crate) struct Verified {
    pub(crate) file: std::fs::File,
    pub(crate) body_len: u64,
    pub(crate) digest: [u8; 32],
    /// The members (version 2), `None` for a version 1 bundle.
    pub(crate) index: Option<Index>,
    /// Entries in archive order.
    pub(crate) manifest: Manifest,
}

/// Runs every check on the bundle at `path`.
pub(crate) fn verify_path(
    path: &std::path::Path,
    policy: &Policy<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Verified> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("opening bundle", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("inspecting bundle", path, e))?
        .len();
    let (digest, body_len) = check_digest(BufReader::with_capacity(BUF, &file), len, progress)?;
    file.rewind()
        .map_err(|e| Error::io("reading bundle", path, e))?;
    let index = crate::members::index(&file, body_len, &policy.limits)?;
    let mut inflater = crate::inflate::Body::open(&file, body_len, index.as_ref(), false)
        .map_err(|e| Error::io("reading bundle", path, e))?;
    let counter = inflater.counter();
    let manifest = verify_body(
        &mut inflater,
        counter,
        body_len,
        index.is_some(),
        policy,
        progress,
    )?;
    inflater
        .finish()
        .map_err(|e| Error::corrupt(format!("gzip: {e}")))?;
    Ok(Verified {
        file,
        body_len,
        digest,
        index,
        manifest,
    })
}

/// Pass 0: the trailer and the checksum over everything before it.
pub(crate) fn check_digest(
    mut src: impl Read,
    len: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<([u8; 32], u64)> {
    let Some(body_len) = len.checked_sub(TRAILER_LEN as u64) else {
        return Err(Error::NotABundle(format!("only {len} bytes")));
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut left = body_len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(BUF).min(BUF);
        let slot = buf.get_mut(..want).unwrap_or_default();
        let n = src
            .read(slot)
            .map_err(|e| Error::io("reading bundle", "<bundle>", e))?;
        if n == 0 {
            return Err(Error::NotABundle("file ended early".into()));
        }
        hasher.update(slot.get(..n).unwrap_or_default());
        left -= n as u64;
        progress(Progress {
            phase: Phase::Check,
            done: body_len - left,
            total: body_len,
        });
    }
    let mut tail = Vec::with_capacity(TRAILER_LEN + 1);
    src.take(TRAILER_LEN as u64 + 1)
        .read_to_end(&mut tail)
        .map_err(|e| Error::io("reading bundle", "<bundle>", e))?;
    let Some(expected) = parse_trailer(&tail) else {
        return Err(Error::NotABundle("no tandem trailer at the end".into()));
    };
    let found: [u8; 32] = hasher.finalize().into();
    if found != expected {
        return Err(Error::Checksum {
            expected: hex::encode(expected),
            found: hex::encode(found),
        });
    }
    Ok((expected, body_len))
}

/// One tar entry as the archive states it.
pub(crate) struct RawEntry {
    pub(crate) path: Vec<u8>,
    pub(crate) kind: tar::EntryType,
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: u64,
    pub(crate) link: Option<Vec<u8>>,
}

/// Streams the gzip+tar body, enforcing limits, calling `visit` per entry
/// (the manifest excepted), and returns the manifest's bytes.
pub(crate) fn scan(
    decompressed: impl Read,
    compressed: Arc<AtomicU64>,
    body_len: u64,
    limits: &Limits,
    phase: Phase,
    progress: &mut dyn FnMut(Progress),
    mut visit: impl FnMut(&RawEntry, &mut dyn Read) -> Result<()>,
) -> Result<Vec<u8>> {
    let tripped = Rc::new(RefCell::new(None));
    let limited = Limited {
        inner: decompressed,
        read: 0,
        compressed: Arc::clone(&compressed),
        limits: *limits,
        tripped: Rc::clone(&tripped),
    };
    let fail = |e: Error| -> Error { tripped.borrow_mut().take().unwrap_or(e) };
    let mut archive = tar::Archive::new(limited);
    let mut manifest: Option<Vec<u8>> = None;
    {
        // Raw entries: GNU long names and pax records come to this loop as
        // entries of their own, so their size is checked before a byte of
        // them is read (the tar crate would read them whole into memory).
        let entries = archive
            .entries()
            .map_err(|e| fail(Error::corrupt(format!("tar: {e}"))))?
            .raw(true);
        let mut count = 0u64;
        let mut declared = 0u64;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| fail(Error::corrupt(format!("tar: {e}"))))?;
            let kind = entry.header().entry_type();
            if kind.is_gnu_longname() || kind.is_gnu_longlink() {
                let slot = if kind.is_gnu_longname() {
                    &mut long_name
                } else {
                    &mut long_link
                };
                *slot = Some(read_long_name(&mut entry, slot.is_some()).map_err(&fail)?);
                continue;
            }
            if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
                return Err(Error::refused(
                    String::from_utf8_lossy(&entry.path_bytes()),
                    Refusal::BadExtension(
                        "pax extended headers are refused (tandem never writes them)".into(),
                    ),
                ));
            }
            count += 1;
            if count > limits.max_entries {
                return Err(Error::Limit {
                    kind: LimitKind::Entries,
                    value: count,
                    limit: limits.max_entries,
                    decompressed: entry.raw_header_position(),
                });
            }
            let header = entry.header();
            let size = entry.size();
            declared = declared.saturating_add(size);
            if declared > limits.max_total_bytes {
                return Err(Error::Limit {
                    kind: LimitKind::TotalBytes,
                    value: declared,
                    limit: limits.max_total_bytes,
                    decompressed: entry.raw_header_position(),
                });
            }
            let path = long_name
                .take()
                .unwrap_or_else(|| entry.path_bytes().into_owned());
            let link = long_link
                .take()
                .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
            let raw = RawEntry {
                path,
                kind: header.entry_type(),
                size,
                mode: header
                    .mode()
                    .map_err(|e| Error::corrupt(format!("tar mode: {e}")))?,
                uid: header
                    .uid()
                    .map_err(|e| Error::corrupt(format!("tar uid: {e}")))?,
                gid: header
                    .gid()
                    .map_err(|e| Error::corrupt(format!("tar gid: {e}")))?,
                mtime: header
                    .mtime()
                    .map_err(|e| Error::corrupt(format!("tar mtime: {e}")))?,
                link,
            };
            if manifest.is_some() {
                return Err(Error::refused(
                    String::from_utf8_lossy(&raw.path),
                    Refusal::AfterManifest,
                ));
            }
            if raw.path == MANIFEST_PATH.as_bytes() {
                let cap = (limits.max_entries.saturating_mul(4096)).max(1 << 20);
                if !raw.kind.is_file() || size > cap {
                    return Err(Error::refused(
                        MANIFEST_PATH,
                        Refusal::BadManifest(format!("{size} bytes")),
                    ));
                }
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(|e| fail(Error::corrupt(format!("reading the manifest: {e}"))))?;
                manifest = Some(bytes);
                continue;
            }
            visit(&raw, &mut entry).map_err(fail)?;
            progress(Progress {
                phase,
                done: compressed.load(Ordering::Relaxed),
                total: body_len,
            });
        }
        if long_name.is_some() || long_link.is_some() {
            return Err(Error::refused(
                "<end of archive>",
                Refusal::BadExtension("a GNU long name or link record ends the archive".into()),
            ));
        }
    }
    // Past the end-of-archive block only zero padding may follow.
    let mut rest = archive.into_inner();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = rest
            .read(&mut buf)
            .map_err(|e| fail(Error::corrupt(format!("gzip: {e}"))))?;
        if n == 0 {
            break;
        }
        if buf.get(..n).unwrap_or_default().iter().any(|b| *b != 0) {
            return Err(Error::corrupt("data after the end of the tar archive"));
        }
    }
    progress(Progress {
        phase,
        done: body_len,
        total: body_len,
    });
    manifest.ok_or_else(|| Error::refused(MANIFEST_PATH, Refusal::BadManifest("missing".into())))
}

/// Reads one GNU long name or long link record, refusing it by its declared
/// size before reading any of it. The trailing NUL is dropped.
fn read_long_name<R: Read>(entry: &mut tar::Entry<'_, R>, twice: bool) -> Result<Vec<u8>> {
    let size = entry.size();
    let limit = MAX_PATH_BYTES as u64 + 1;
    if size > limit {
        return Err(Error::Limit {
            kind: LimitKind::LongName,
            value: size,
            limit,
            decompressed: entry.raw_header_position().saturating_add(512),
        });
    }
    if twice {
        return Err(Error::refused(
            "<GNU long name>",
            Refusal::BadExtension("two GNU long name or link records for one entry".into()),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| Error::corrupt(format!("reading a GNU long name: {e}")))?;
    if bytes.last() == Some(&0) {
        bytes.pop();
    }
    Ok(bytes)
}

/// Pass 1: every rule, every content hash, the manifest. `indexed`: whether
/// the members had index headers (the manifest's version must agree).
pub(crate) fn verify_body(
    decompressed: impl Read,
    compressed: Arc<AtomicU64>,
    body_len: u64,
    indexed: bool,
    policy: &Policy<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest> {
    let mut checker = Checker::new(policy);
    let manifest = scan(
        decompressed,
        compressed,
        body_len,
        &policy.limits,
        Phase::Verify,
        progress,
        |raw, data| checker.entry(raw, data, &mut |_, _| Ok(())),
    )?;
    checker.finish(&manifest, indexed)
}

/// Every per-entry check of a streaming pass, and the content hashes; what
/// each file holds is also handed to a sink (restore's one pass writes it
/// into the staging directory).
pub(crate) struct Checker<'p, 'a> {
    policy: &'p Policy<'a>,
    seen: Vec<Seen>,
    index: HashMap<String, usize>,
    buf: Vec<u8>,
}

/// What a [`Checker`] saw of one entry, for a sink.
pub(crate) struct Checked<'e> {
    /// Position among the entries (archive order, manifest excluded).
    pub(crate) index: usize,
    /// The entry path.
    pub(crate) path: &'e EntryPath,
    /// Its kind.
    pub(crate) kind: EntryKind,
}

impl<'p, 'a> Checker<'p, 'a> {
    pub(crate) fn new(policy: &'p Policy<'a>) -> Self {
        Checker {
            policy,
            seen: Vec::new(),
            index: HashMap::new(),
            buf: vec![0u8; BUF],
        }
    }

    /// Checks one entry and hashes its content. `sink` is called once before
    /// the content with an empty slice (the entry's start), then with each
    /// piece of content.
    pub(crate) fn entry(
        &mut self,
        raw: &RawEntry,
        data: &mut dyn Read,
        sink: &mut dyn FnMut(&Checked<'_>, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let policy = self.policy;
        let (path, kind, link) = check_entry(raw, policy, &self.index, &self.seen)?;
        let checked = Checked {
            index: self.seen.len(),
            path: &path,
            kind,
        };
        sink(&checked, &[])?;
        let sha256 = if kind == EntryKind::File {
            let mut hasher = Sha256::new();
            loop {
                let n = data
                    .read(&mut self.buf)
                    .map_err(|e| Error::corrupt(format!("reading `{}`: {e}", path.full)))?;
                if n == 0 {
                    break;
                }
                let piece = self.buf.get(..n).unwrap_or_default();
                hasher.update(piece);
                sink(&checked, piece)?;
            }
            Some(hex::encode(hasher.finalize()))
        } else {
            if raw.size != 0 {
                return Err(Error::refused(path.full, Refusal::ManifestMismatch("size")));
            }
            None
        };
        self.index.insert(path.full.clone(), self.seen.len());
        self.seen.push(Seen {
            path,
            kind,
            link,
            sha256,
            size: raw.size,
            mode: raw.mode & 0o7777,
            uid: raw.uid,
            gid: raw.gid,
            mtime: raw.mtime,
        });
        Ok(())
    }

    /// Cross-checks the manifest's bytes with every entry seen; returns the
    /// manifest with its entries in archive order.
    pub(crate) fn finish(self, manifest: &[u8], indexed: bool) -> Result<Manifest> {
        match_manifest(manifest, self.seen, indexed, self.policy)
    }
}

/// An entry as pass 1 saw it.
struct Seen {
    path: EntryPath,
    kind: EntryKind,
    link: Option<String>,
    sha256: Option<String>,
    size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// The per-entry rules that need no manifest.
fn check_entry(
    raw: &RawEntry,
    policy: &Policy<'_>,
    index: &HashMap<String, usize>,
    seen: &[Seen],
) -> Result<(EntryPath, EntryKind, Option<String>)> {
    let shown = String::from_utf8_lossy(&raw.path).into_owned();
    let refuse = |reason| Error::refused(shown.clone(), reason);
    let path = parse_entry_path(&raw.path).map_err(refuse)?;
    let refuse = |reason| Error::refused(path.full.clone(), reason);
    use tar::EntryType as T;
    let kind = match raw.kind {
        T::Regular => EntryKind::File,
        T::Directory => EntryKind::Dir,
        T::Symlink => EntryKind::Symlink,
        T::Link => EntryKind::Hardlink,
        T::Char | T::Block => return Err(refuse(Refusal::Special("device"))),
        T::Fifo => return Err(refuse(Refusal::Special("fifo"))),
        T::GNUSparse => return Err(refuse(Refusal::Special("sparse file"))),
        _ => return Err(refuse(Refusal::Special("unknown type"))),
    };
    let mode = raw.mode & 0o7777;
    if mode & 0o6000 != 0 && !policy.allow_setid {
        return Err(refuse(Refusal::SetId(mode)));
    }
    // A symlink's mode is never applied (Linux has none to set).
    if mode & 0o002 != 0 && kind != EntryKind::Symlink && !policy.allow_world_writable {
        return Err(refuse(Refusal::WorldWritable(mode)));
    }
    // Restore stages inside a root that is a mount point, under this name.
    if let Some(first) = path.rel().split('/').next()
        && first.starts_with(STAGE_PREFIX)
    {
        return Err(refuse(Refusal::Reserved(first.to_owned())));
    }
    if index.contains_key(&path.full) {
        return Err(refuse(Refusal::Duplicate));
    }
    match path.parent() {
        None if kind != EntryKind::Dir => {
            return Err(refuse(Refusal::BadPath("a root entry must be a directory")));
        }
        None => {}
        Some(parent) => {
            let parent_is_dir = index
                .get(parent)
                .and_then(|i| seen.get(*i))
                .is_some_and(|s| s.kind == EntryKind::Dir);
            if !parent_is_dir {
                return Err(refuse(Refusal::Orphan));
            }
        }
    }
    if policy.node.is_some_and(|node| node.is_match(&path.full)) {
        return Err(refuse(Refusal::NodeClass));
    }
    let link = match kind {
        EntryKind::Symlink => {
            let target = raw.link.as_deref().unwrap_or_default();
            if policy.strict_links {
                Some(check_symlink_target(&path, target).map_err(refuse)?)
            } else {
                let text = std::str::from_utf8(target)
                    .map_err(|_| refuse(Refusal::BadPath("link target is not UTF-8")))?;
                if text.is_empty() {
                    return Err(refuse(Refusal::BadPath("empty link target")));
                }
                Some(text.to_owned())
            }
        }
        EntryKind::Hardlink => {
            let target = raw.link.as_deref().unwrap_or_default();
            let shown_target = String::from_utf8_lossy(target).into_owned();
            let target = parse_entry_path(target)
                .map_err(|_| refuse(Refusal::LinkEscapes(shown_target.clone())))?;
            let ok = target.root() == path.root()
                && index
                    .get(&target.full)
                    .and_then(|i| seen.get(*i))
                    .is_some_and(|s| s.kind == EntryKind::File);
            if !ok {
                return Err(refuse(Refusal::BadHardlink(shown_target)));
            }
            Some(target.full)
        }
        EntryKind::Dir | EntryKind::File => None,
    };
    Ok((path, kind, link))
}

/// Cross-checks what the archive holds with what the manifest says; returns the
/// manifest with its entries in archive order.
fn match_manifest(
    bytes: &[u8],
    seen: Vec<Seen>,
    indexed: bool,
    policy: &Policy<'_>,
) -> Result<Manifest> {
    let bad = |why: String| Error::refused(MANIFEST_PATH, Refusal::BadManifest(why));
    let mut manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let known = [FORMAT_VERSION_SERIAL, FORMAT_VERSION];
    if manifest.format != FORMAT_NAME || !known.contains(&manifest.version) {
        return Err(bad(format!(
            "format {} version {} is not {FORMAT_NAME} {FORMAT_VERSION_SERIAL} or {FORMAT_VERSION}",
            manifest.format, manifest.version
        )));
    }
    if indexed != (manifest.version == FORMAT_VERSION) {
        return Err(bad(format!(
            "version {} but the gzip members {} index headers",
            manifest.version,
            if indexed { "have" } else { "lack" }
        )));
    }
    let mut roots = HashSet::new();
    for root in &manifest.roots {
        check_root_name(&root.name).map_err(|e| bad(e.to_string()))?;
        if !roots.insert(root.name.as_str()) {
            return Err(bad(format!("root `{}` twice", root.name)));
        }
    }
    let mut listed: HashMap<&str, &ManifestEntry> = HashMap::new();
    for entry in &manifest.entries {
        if listed.insert(entry.path.as_str(), entry).is_some() {
            return Err(bad(format!("`{}` listed twice", entry.path)));
        }
    }
    if !manifest.remove.is_empty() && !policy.allow_remove {
        return Err(Error::refused(MANIFEST_PATH, Refusal::RemoveList));
    }
    for path in &manifest.remove {
        let parsed =
            parse_entry_path(path.as_bytes()).map_err(|r| Error::refused(path.clone(), r))?;
        if !roots.contains(parsed.root()) {
            return Err(Error::refused(
                path.clone(),
                Refusal::UnknownRoot(parsed.root().to_owned()),
            ));
        }
    }
    let mut ordered = Vec::with_capacity(seen.len());
    for s in &seen {
        let refuse = |reason| Error::refused(s.path.full.clone(), reason);
        if !roots.contains(s.path.root()) {
            return Err(refuse(Refusal::UnknownRoot(s.path.root().to_owned())));
        }
        let Some(m) = listed.remove(s.path.full.as_str()) else {
            return Err(refuse(Refusal::NotInManifest));
        };
        if m.kind != s.kind {
            return Err(refuse(Refusal::ManifestMismatch("type")));
        }
        if m.size != s.size {
            return Err(refuse(Refusal::ManifestMismatch("size")));
        }
        if m.mode != s.mode {
            return Err(refuse(Refusal::ManifestMismatch("mode")));
        }
        if u64::from(m.uid) != s.uid || u64::from(m.gid) != s.gid {
            return Err(refuse(Refusal::ManifestMismatch("owner")));
        }
        if m.mtime < 0 {
            return Err(refuse(Refusal::NegativeMtime(m.mtime)));
        }
        if u64::try_from(m.mtime).ok() != Some(s.mtime) || m.mtime_nsec >= 1_000_000_000 {
            return Err(refuse(Refusal::ManifestMismatch("mtime")));
        }
        if m.link != s.link {
            return Err(refuse(Refusal::ManifestMismatch("link target")));
        }
        if m.sha256 != s.sha256 {
            return Err(refuse(Refusal::ContentMismatch));
        }
        ordered.push(m.clone());
    }
    if let Some(missing) = manifest
        .entries
        .iter()
        .find(|e| listed.contains_key(e.path.as_str()))
    {
        return Err(Error::refused(
            missing.path.clone(),
            Refusal::MissingFromArchive,
        ));
    }
    manifest.entries = ordered;
    Ok(manifest)
}

/// Enforces total size and ratio on decompressed bytes as they come out, so a
/// decompression bomb stops within one buffer of the limit.
struct Limited<R> {
    inner: R,
    read: u64,
    compressed: Arc<AtomicU64>,
    limits: Limits,
    tripped: Rc<RefCell<Option<Error>>>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        let compressed = self.compressed.load(Ordering::Relaxed).max(1);
        let trip = if self.read > self.limits.max_total_bytes {
            Some((
                LimitKind::TotalBytes,
                self.read,
                self.limits.max_total_bytes,
            ))
        } else if self.read > self.limits.ratio_grace_bytes
            && self.read / compressed > self.limits.max_ratio
        {
            Some((
                LimitKind::Ratio,
                self.read / compressed,
                self.limits.max_ratio,
            ))
        } else {
            None
        };
        if let Some((kind, value, limit)) = trip {
            let error = Error::Limit {
                kind,
                value,
                limit,
                decompressed: self.read,
            };
            let message = error.to_string();
            *self.tripped.borrow_mut() = Some(error);
            return Err(io::Error::other(message));
        }
        Ok(n)
    }
}
