//! Creating bundles: walk the spec's roots, write tar entries into parallel gzip
//! members, then the manifest and the trailer.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::{
    EntryKind, FORMAT_NAME, FORMAT_VERSION, MANIFEST_PATH, Manifest, ManifestEntry, ManifestRoot,
    parse_entry_path,
};
use crate::fsutil::{self, Names};
use crate::pgz::ParGzWriter;
use crate::spec::{BundleSpec, CompiledSpec};
use crate::{Phase, Progress};

/// Prefix of staging directories; never bundled.
pub(crate) const STAGE_PREFIX: &str = ".tandem-stage";

/// How to create a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CreateOptions {
    /// Threads compressing gzip members (1 compresses inline).
    pub threads: usize,
}

impl Default for CreateOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        CreateOptions {
            threads: cores.min(8),
        }
    }
}

impl CreateOptions {
    /// Options with this many compressing threads.
    pub fn with_threads(threads: usize) -> Self {
        CreateOptions {
            threads: threads.max(1),
        }
    }
}

/// What [`create`] bundled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CreateReport {
    /// Entries (roots, directories, files, links), the manifest not counted.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Bytes of file content.
    pub content_bytes: u64,
    /// Bytes of the bundle.
    pub bundle_bytes: u64,
    /// sha256 (hex) over the bundle before its trailer, as the trailer records it.
    pub sha256: String,
    /// Files under the roots that were left out and why (sockets, fifos, devices).
    pub skipped: Vec<Skipped>,
}

/// A file left out of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// One thing to put into a bundle.
pub(crate) struct Item {
    /// Entry path, `<root>/<rel>`.
    pub(crate) path: String,
    /// Where it is read from.
    pub(crate) source: PathBuf,
    pub(crate) kind: ItemKind,
    pub(crate) meta: Metadata,
}

pub(crate) enum ItemKind {
    Dir,
    File,
    Symlink(String),
    /// Entry path of the earlier file it shares an inode with.
    Hardlink(String),
}

/// Creates a bundle of `spec`'s roots into `out`.
///
/// `progress` is called with bytes of file content done out of the total.
pub fn create(
    spec: &BundleSpec,
    out: impl Write,
    options: &CreateOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<CreateReport> {
    let compiled = spec.compile()?;
    let (items, skipped) = collect(spec, &compiled)?;
    let roots = spec
        .roots
        .iter()
        .map(|r| ManifestRoot {
            name: r.name.clone(),
            path: r.path.to_string_lossy().into_owned(),
        })
        .collect();
    let mut report = write_bundle(
        &items,
        roots,
        Vec::new(),
        out,
        spec.compression_level,
        options.threads,
        progress,
    )?;
    report.skipped = skipped;
    Ok(report)
}

/// Creates a bundle into the file `path` atomically (temporary file, fsync,
/// rename, fsync of the directory): `path` holds either its old content or the
/// whole new bundle.
pub fn create_file(
    spec: &BundleSpec,
    path: &Path,
    options: &CreateOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<CreateReport> {
    fsutil::write_atomic(path, |out| create(spec, out, options, progress))
}

/// Walks every root of the spec: items in bundle order, and what was skipped.
fn collect(spec: &BundleSpec, compiled: &CompiledSpec) -> Result<(Vec<Item>, Vec<Skipped>)> {
    let mut walk = Walk {
        items: Vec::new(),
        skipped: Vec::new(),
        spec,
        compiled,
        links: HashMap::new(),
    };
    for (index, root) in spec.roots.iter().enumerate() {
        let meta =
            std::fs::metadata(&root.path).map_err(|e| Error::io("reading root", &root.path, e))?;
        if !meta.is_dir() {
            return Err(Error::Unbundlable {
                path: root.path.clone(),
                reason: "root is not a directory".into(),
            });
        }
        walk.check_setid(&root.path, &meta)?;
        walk.links.clear();
        walk.items.push(Item {
            path: root.name.clone(),
            source: root.path.clone(),
            kind: ItemKind::Dir,
            meta,
        });
        walk.dir(index, &root.path, "")?;
    }
    Ok((walk.items, walk.skipped))
}

struct Walk<'a> {
    items: Vec<Item>,
    skipped: Vec<Skipped>,
    spec: &'a BundleSpec,
    compiled: &'a CompiledSpec,
    /// (device, inode) of files with several links → entry path of the first.
    links: HashMap<(u64, u64), String>,
}

impl Walk<'_> {
    /// Walks one directory; returns whether anything under it was bundled.
    fn dir(&mut self, root: usize, dir: &Path, rel: &str) -> Result<bool> {
        let (Some(root_spec), Some(globs)) =
            (self.spec.roots.get(root), self.compiled.roots.get(root))
        else {
            return Ok(false);
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))? {
            names.push(entry.map_err(|e| Error::io("listing", dir, e))?.file_name());
        }
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        let mut any = false;
        for name in names {
            let source = dir.join(&name);
            let Some(name) = name.to_str() else {
                return Err(Error::Unbundlable {
                    path: source,
                    reason: "file name is not UTF-8".into(),
                });
            };
            if rel.is_empty() && name.starts_with(STAGE_PREFIX) {
                continue;
            }
            let child_rel = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let path = format!("{}/{child_rel}", root_spec.name);
            if globs.exclude.is_match(&child_rel) || self.compiled.is_node_class(&path) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&source)
                .map_err(|e| Error::io("inspecting", &source, e))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                self.check_setid(&source, &meta)?;
                let at = self.items.len();
                self.items.push(Item {
                    path,
                    source: source.clone(),
                    kind: ItemKind::Dir,
                    meta,
                });
                let inner = self.dir(root, &source, &child_rel)?;
                if inner || globs.include.is_match(&child_rel) {
                    any = true;
                } else {
                    self.items.truncate(at);
                }
                continue;
            }
            if !globs.include.is_match(&child_rel) {
                continue;
            }
            let kind = if kind.is_file() {
                self.check_setid(&source, &meta)?;
                match self.links.get(&(meta.dev(), meta.ino())) {
                    Some(first) => ItemKind::Hardlink(first.clone()),
                    None => {
                        if meta.nlink() > 1 {
                            self.links.insert((meta.dev(), meta.ino()), path.clone());
                        }
                        ItemKind::File
                    }
                }
            } else if kind.is_symlink() {
                let target = read_link_normalized(&source)?;
                let entry = parse_entry_path(path.as_bytes()).map_err(|r| Error::Unbundlable {
                    path: source.clone(),
                    reason: r.to_string(),
                })?;
                crate::format::check_symlink_target(&entry, target.as_bytes()).map_err(|r| {
                    Error::Unbundlable {
                        path: source.clone(),
                        reason: format!("{r}; exclude it in the spec to bundle the rest"),
                    }
                })?;
                ItemKind::Symlink(target)
            } else {
                let what = if kind.is_socket() {
                    "socket"
                } else if kind.is_fifo() {
                    "fifo"
                } else {
                    "device"
                };
                self.skipped.push(Skipped {
                    path: source,
                    reason: format!("{what}s are never bundled"),
                });
                continue;
            };
            self.items.push(Item {
                path,
                source,
                kind,
                meta,
            });
            any = true;
        }
        Ok(any)
    }

    /// Setid and world-writable bits, unless the spec allows them.
    fn check_setid(&self, source: &Path, meta: &Metadata) -> Result<()> {
        let mode = meta.mode() & 0o7777;
        if mode & 0o6000 != 0 && !self.spec.allow_setid {
            return Err(Error::Unbundlable {
                path: source.to_owned(),
                reason: format!(
                    "mode {mode:o} has setuid/setgid bits and the spec has allow_setid = false"
                ),
            });
        }
        if mode & 0o002 != 0 && !self.spec.allow_world_writable {
            return Err(Error::Unbundlable {
                path: source.to_owned(),
                reason: format!(
                    "mode {mode:o} is writable by every user and the spec has allow_world_writable = false"
                ),
            });
        }
        Ok(())
    }
}

/// A symlink's target as the tar format stores it: components joined by `/`.
pub(crate) fn read_link_normalized(path: &Path) -> Result<String> {
    let target = std::fs::read_link(path).map_err(|e| Error::io("reading link", path, e))?;
    let Some(text) = target.to_str() else {
        return Err(Error::Unbundlable {
            path: path.to_owned(),
            reason: "link target is not UTF-8".into(),
        });
    };
    Ok(normalize_link(text))
}

/// Drops empty and interior `.` components, as the tar writer does.
pub(crate) fn normalize_link(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for (i, c) in text.split('/').enumerate() {
        match c {
            "" if i == 0 => parts.push(""),
            "" => {}
            "." if i > 0 => {}
            other => parts.push(other),
        }
    }
    match parts.as_slice() {
        [""] => "/".to_owned(),
        _ => parts.join("/"),
    }
}

/// Writes items, manifest and trailer into `out`.
pub(crate) fn write_bundle(
    items: &[Item],
    roots: Vec<ManifestRoot>,
    remove: Vec<String>,
    out: impl Write,
    level: u32,
    threads: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<CreateReport> {
    let total: u64 = items
        .iter()
        .filter(|i| matches!(i.kind, ItemKind::File))
        .map(|i| i.meta.len())
        .sum();
    let mut done = 0u64;
    let mut names = Names::default();
    let mut entries = Vec::with_capacity(items.len());
    let mut report = CreateReport::default();
    let hashing = HashCount {
        inner: out,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut tar = tar::Builder::new(ParGzWriter::new(hashing, level, threads));
    let tar_err = |e: io::Error| Error::io("writing bundle", "<bundle>", e);
    progress(Progress {
        phase: Phase::Bundle,
        done,
        total,
    });
    for item in items {
        let meta = &item.meta;
        let mut entry = ManifestEntry {
            path: item.path.clone(),
            kind: EntryKind::Dir,
            size: 0,
            mode: meta.mode() & 0o7777,
            // The tar header has no negative times: a file from before 1970
            // is bundled at 1970, in the header and the manifest alike.
            mtime: meta.mtime().max(0),
            mtime_nsec: if meta.mtime() < 0 {
                0
            } else {
                u32::try_from(meta.mtime_nsec()).unwrap_or(0)
            },
            uid: meta.uid(),
            gid: meta.gid(),
            user: names.user(meta.uid()),
            group: names.group(meta.gid()),
            sha256: None,
            link: None,
        };
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid.into());
        header.set_gid(entry.gid.into());
        header.set_mtime(u64::try_from(entry.mtime).unwrap_or(0));
        if entry
            .user
            .as_deref()
            .is_some_and(|u| header.set_username(u).is_err())
        {
            entry.user = None;
        }
        if entry
            .group
            .as_deref()
            .is_some_and(|g| header.set_groupname(g).is_err())
        {
            entry.group = None;
        }
        header.set_size(0);
        match &item.kind {
            ItemKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut header, format!("{}/", item.path), io::empty())
                    .map_err(tar_err)?;
            }
            ItemKind::Symlink(target) => {
                entry.kind = EntryKind::Symlink;
                header.set_entry_type(tar::EntryType::Symlink);
                tar.append_link(&mut header, &item.path, target)
                    .map_err(tar_err)?;
                entry.link = Some(target.clone());
            }
            ItemKind::Hardlink(target) => {
                entry.kind = EntryKind::Hardlink;
                header.set_entry_type(tar::EntryType::Link);
                tar.append_link(&mut header, &item.path, target)
                    .map_err(tar_err)?;
                entry.link = Some(target.clone());
            }
            ItemKind::File => {
                entry.kind = EntryKind::File;
                let (file, size) = open_unchanged(&item.source, meta)?;
                entry.size = size;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                let mut reader = Exact {
                    file,
                    remaining: size,
                    hasher: Sha256::new(),
                    short: false,
                    done: &mut done,
                    total,
                    progress: &mut *progress,
                };
                let appended = tar.append_data(&mut header, &item.path, &mut reader);
                if reader.short {
                    return Err(Error::ChangedWhileBundling {
                        path: item.source.clone(),
                    });
                }
                appended.map_err(|e| Error::io("reading", &item.source, e))?;
                let hash = reader.hasher.finalize();
                check_unchanged(&reader.file, &item.source, meta)?;
                entry.sha256 = Some(hex::encode(hash));
                report.files += 1;
                report.content_bytes += size;
            }
        }
        entries.push(entry);
    }
    report.entries = entries.len() as u64;
    let manifest = Manifest {
        format: FORMAT_NAME.to_owned(),
        version: FORMAT_VERSION,
        roots,
        entries,
        remove,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::corrupt(format!("manifest: {e}")))?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(json.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, MANIFEST_PATH, &json[..])
        .map_err(tar_err)?;
    let gz = tar.into_inner().map_err(tar_err)?;
    let hashing = gz.finish().map_err(tar_err)?;
    let HashCount {
        mut inner,
        hasher,
        count,
    } = hashing;
    let digest: [u8; 32] = hasher.finalize().into();
    inner
        .write_all(&crate::format::trailer(&digest))
        .map_err(tar_err)?;
    inner.flush().map_err(tar_err)?;
    report.bundle_bytes = count + crate::format::TRAILER_LEN as u64;
    report.sha256 = hex::encode(digest);
    progress(Progress {
        phase: Phase::Bundle,
        done: total,
        total,
    });
    Ok(report)
}

/// Opens a regular file without following links and checks it is still what
/// the walk saw.
fn open_unchanged(path: &Path, seen: &Metadata) -> Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| Error::io("opening", path, e))?;
    check_unchanged(&file, path, seen)?;
    Ok((file, seen.len()))
}

fn check_unchanged(file: &File, path: &Path, seen: &Metadata) -> Result<()> {
    let now = file
        .metadata()
        .map_err(|e| Error::io("inspecting", path, e))?;
    let same = now.is_file()
        && now.ino() == seen.ino()
        && now.len() == seen.len()
        && now.mtime() == seen.mtime()
        && now.mtime_nsec() == seen.mtime_nsec();
    if same {
        Ok(())
    } else {
        Err(Error::ChangedWhileBundling {
            path: path.to_owned(),
        })
    }
}

/// Reads exactly `remaining` bytes of a file, hashing them; a short file sets
/// `short` and fails.
struct Exact<'a> {
    file: File,
    remaining: u64,
    hasher: Sha256,
    short: bool,
    done: &'a mut u64,
    total: u64,
    progress: &'a mut dyn FnMut(Progress),
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let Some(slot) = buf.get_mut(..want) else {
            return Ok(0);
        };
        let n = self.file.read(slot)?;
        if n == 0 {
            self.short = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while bundling",
            ));
        }
        self.hasher.update(slot.get(..n).unwrap_or_default());
        self.remaining -= n as u64;
        *self.done += n as u64;
        (self.progress)(Progress {
            phase: Phase::Bundle,
            done: *self.done,
            total: self.total,
        });
        Ok(n)
    }
}

/// Hashes and counts what passes through.
struct HashCount<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashCount<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_link;

    #[test]
    fn links_are_normalized_like_the_tar_writer() {
        assert_eq!(normalize_link("a//b/./c/"), "a/b/c");
        assert_eq!(normalize_link("./a"), "./a");
        assert_eq!(normalize_link("../x"), "../x");
        assert_eq!(normalize_link("/etc/x"), "/etc/x");
        assert_eq!(normalize_link("."), ".");
    }
}
