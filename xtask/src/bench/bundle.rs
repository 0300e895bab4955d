//! `cargo xtask bench bundle`: config-file bundles beside GNU tar.
//!
//! Generates a ~200 MB tree once under `target/bench/bundle-tree/` (thousands of
//! small config files in three roots plus multi-megabyte `.wav` prompts), then in
//! one run, each as the median of [`RUNS`] runs taken in turn (tar, tandem,
//! tandem's baseline build, then the next run):
//! - `tar czf` of the tree and `failover copy-config-files` of the same roots;
//! - `tar xzf` into an empty directory (also followed by `sync -f`, because a
//!   restore makes its staging durable before it renames) and
//!   `failover restore-config-files --root` into an empty directory;
//!
//! - the disk's floor for a durable restore: the tree's bytes written to one file
//!   and fsynced (no decompression, no file creation), which no restore that makes
//!   its files durable can beat;
//!
//! and compares the sizes. Then the same at 10x ([`COPIES`] copies of the tree
//! side by side in the roots, ~60,000 files and ~2 GB, made under
//! `target/bench/` and removed after), [`RUNS_10X`] run(s), with the peak RSS
//! of each command (`ru_maxrss` of the child from `wait4`, which covers the
//! children it waited for, so GNU tar's `gzip` counts).
//!
//! With `TANDEM_BENCH_BASELINE_FAILOVER=<path to another failover binary>`
//! (for example one built from `main`), that binary creates and restores too,
//! in the same runs, its own bundle: an A/B on one machine at one time. The
//! tool runs as users run it: the release build of the `failover` binary.
//! Results print as a table and go to `target/bench/bundle.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Timed runs per measurement (the median is reported).
const RUNS: usize = 5;
/// Timed runs at 10x (each takes about 2.5 minutes on two cores). One run's
/// restore came out 0.89 and 1.20 of `tar xzf` in two benches of one build on
/// one machine: the median of three is the figure.
const RUNS_10X: usize = 3;
/// Copies of the bench tree in the 10x tree.
const COPIES: usize = 10;
/// Bump to regenerate the tree when the generator changes.
const TREE_VERSION: &str = "1";
/// The roots of the bench tree.
const ROOTS: [&str; 3] = ["enrollment", "web-conf", "prompts"];
/// Names the baseline `failover` binary for an A/B in the same run.
const BASELINE_ENV: &str = "TANDEM_BENCH_BASELINE_FAILOVER";

pub(crate) fn run() -> anyhow::Result<Vec<super::Row>> {
    let out = crate::bench::output_dir()?;
    let tree = out.join("bundle-tree");
    let generated = generate(&tree)?;
    let failover = build_failover()?;
    let baseline = std::env::var_os(BASELINE_ENV).map(PathBuf::from);
    if let Some(path) = &baseline
        && !path.exists()
    {
        bail!(
            "{BASELINE_ENV} names {}, which does not exist",
            path.display()
        );
    }
    let tools = Tools { failover, baseline };
    let mut json = Vec::new();
    let one = measure(&out, &tree, &generated, RUNS, &tools)?;
    json.push(one.json("1x", &generated));
    let mut rows = one.rows(&generated, false);

    let big = out.join("bundle-tree-10x");
    let result = generate_10x(&tree, &generated, &big).and_then(|big_generated| {
        let ten = measure(&out, &big, &big_generated, RUNS_10X, &tools)?;
        json.push(ten.json("10x", &big_generated));
        Ok(ten.rows(&big_generated, true))
    });
    // The 10x tree is removed whatever happened (it is ~2 GB).
    remove(&big)?;
    rows.extend(result?);

    let path = out.join("bundle.json");
    std::fs::write(&path, format!("[\n{}\n]\n", json.join(",\n")))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results: {}", path.display());
    Ok(rows)
}

/// The `failover` binaries a run times.
struct Tools {
    /// This tree's release build.
    failover: PathBuf,
    /// Another build to compare with, in the same runs.
    baseline: Option<PathBuf>,
}

/// One timed command: wall time and peak RSS.
#[derive(Debug, Clone, Copy)]
struct Sample {
    time: Duration,
    /// KiB.
    rss: u64,
}

/// The samples of one kind of command over the runs.
#[derive(Debug, Default)]
struct Samples(Vec<Sample>);

impl Samples {
    fn median(&self) -> Duration {
        let mut times: Vec<Duration> = self.0.iter().map(|s| s.time).collect();
        times.sort();
        times.get(times.len() / 2).copied().unwrap_or_default()
    }

    /// The largest peak RSS of the runs, in MB.
    fn rss_mb(&self) -> f64 {
        self.0.iter().map(|s| s.rss).max().unwrap_or(0) as f64 * 1024.0 / 1e6
    }

    fn secs(&self) -> f64 {
        self.median().as_secs_f64()
    }
}

/// Everything one scale measured.
struct Measured {
    runs: usize,
    tar_create: Samples,
    our_create: Samples,
    old_create: Option<Samples>,
    tar_extract: Samples,
    tar_extract_sync: Samples,
    our_restore: Samples,
    old_restore: Option<Samples>,
    /// The tree's bytes written to one file and fsynced.
    disk_floor: Samples,
    tar_size: u64,
    our_size: u64,
    old_size: Option<u64>,
}

/// Times create and restore of `tree` by GNU tar and by tandem (and the
/// baseline build), `runs` times in turn.
fn measure(
    out: &Path,
    tree: &Path,
    generated: &Generated,
    runs: usize,
    tools: &Tools,
) -> anyhow::Result<Measured> {
    let work = out.join("bundle-work");
    remove(&work)?;
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let config = work.join("node.toml");
    std::fs::write(&config, node_config(tree)).context("writing the bench node config")?;
    println!(
        "bundle: timing {} files, {:.1} MB, {runs} run(s) ...",
        generated.files,
        generated.bytes as f64 / 1e6
    );
    // Warm the page cache so every tool reads the tree from memory.
    sh(Command::new("tar")
        .args(["cf", "/dev/null", "-C"])
        .arg(tree)
        .arg("."))?;

    let tar_gz = work.join("gnu.tar.gz");
    let ours = work.join("tandem.tar.gz");
    let old = work.join("baseline.tar.gz");
    let create = |bin: &Path, to: &Path| -> anyhow::Result<Sample> {
        measured(
            Command::new(bin)
                .arg("--config")
                .arg(&config)
                .arg("copy-config-files")
                .arg("--output")
                .arg(to),
        )
    };
    let mut m = Measured {
        runs,
        tar_create: Samples::default(),
        our_create: Samples::default(),
        old_create: tools.baseline.as_ref().map(|_| Samples::default()),
        tar_extract: Samples::default(),
        tar_extract_sync: Samples::default(),
        our_restore: Samples::default(),
        old_restore: tools.baseline.as_ref().map(|_| Samples::default()),
        disk_floor: Samples::default(),
        tar_size: 0,
        our_size: 0,
        old_size: None,
    };
    for _ in 0..runs {
        m.tar_create.0.push(measured(
            Command::new("tar")
                .arg("czf")
                .arg(&tar_gz)
                .arg("-C")
                .arg(tree)
                .args(ROOTS),
        )?);
        m.our_create.0.push(create(&tools.failover, &ours)?);
        if let (Some(bin), Some(samples)) = (&tools.baseline, &mut m.old_create) {
            samples.0.push(create(bin, &old)?);
        }
    }
    m.tar_size = std::fs::metadata(&tar_gz)?.len();
    m.our_size = std::fs::metadata(&ours)?.len();
    if tools.baseline.is_some() {
        m.old_size = Some(std::fs::metadata(&old)?.len());
    }
    // Our bundle stays a .tar.gz GNU tar reads (gzip members, extra fields).
    sh(Command::new("tar")
        .arg("tzf")
        .arg(&ours)
        .stdout(std::process::Stdio::null()))
    .context("GNU tar reading tandem's bundle")?;

    let dest = work.join("dest");
    let fresh = |dest: &Path| -> anyhow::Result<()> {
        remove(dest)?;
        std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        sh(Command::new("sync").arg("-f").arg(dest))
    };
    let state = work.join("state");
    let restore = |bin: &Path, bundle: &Path| -> anyhow::Result<Sample> {
        fresh(&dest)?;
        remove(&state)?;
        measured(
            Command::new(bin)
                .arg("--state-dir")
                .arg(&state)
                .arg("--config")
                .arg(&config)
                .arg("restore-config-files")
                .arg("--bundle")
                .arg(bundle)
                .arg("--root")
                .arg(&dest),
        )
    };
    for _ in 0..runs {
        fresh(&dest)?;
        m.tar_extract.0.push(measured(
            Command::new("tar")
                .arg("xzf")
                .arg(&tar_gz)
                .arg("-C")
                .arg(&dest),
        )?);
        fresh(&dest)?;
        let start = Instant::now();
        let mut tar = measured(
            Command::new("tar")
                .arg("xzf")
                .arg(&tar_gz)
                .arg("-C")
                .arg(&dest),
        )?;
        sh(Command::new("sync").arg("-f").arg(&dest))?;
        tar.time = start.elapsed();
        m.tar_extract_sync.0.push(tar);
        m.our_restore.0.push(restore(&tools.failover, &ours)?);
        if let (Some(bin), Some(samples)) = (&tools.baseline, &mut m.old_restore) {
            samples.0.push(restore(bin, &old)?);
        }
        fresh(&dest)?;
        m.disk_floor
            .0
            .push(durable_write(&dest.join("floor"), generated.bytes)?);
    }
    remove(&dest)?;
    remove(&work)?;
    m.print(generated);
    Ok(m)
}

impl Measured {
    fn print(&self, generated: &Generated) {
        let mb = generated.bytes as f64 / 1e6;
        println!(
            "bundle: {} files, {mb:.1} MB in {} roots ({} cores, median of {} run(s))",
            generated.files,
            ROOTS.len(),
            cores(),
            self.runs
        );
        println!(
            "{:<44} {:>9} {:>10} {:>13}",
            "operation", "seconds", "MB/s", "peak RSS MB"
        );
        let mut rows = vec![
            ("create: GNU tar czf", &self.tar_create),
            ("create: failover copy-config-files", &self.our_create),
        ];
        if let Some(old) = &self.old_create {
            rows.push(("create: baseline failover", old));
        }
        rows.push(("restore: GNU tar xzf", &self.tar_extract));
        rows.push(("restore: GNU tar xzf + sync -f", &self.tar_extract_sync));
        rows.push(("restore: failover restore-config-files", &self.our_restore));
        if let Some(old) = &self.old_restore {
            rows.push(("restore: baseline failover", old));
        }
        rows.push(("floor: the bytes to one file + fsync", &self.disk_floor));
        for (name, s) in rows {
            println!(
                "{name:<44} {:>9.3} {:>10.1} {:>13.1}",
                s.secs(),
                mb / s.secs().max(1e-9),
                s.rss_mb()
            );
        }
        println!("{:<44} {:>20}", "size: GNU tar czf", self.tar_size);
        println!(
            "{:<44} {:>20}",
            "size: failover copy-config-files", self.our_size
        );
        if let Some(size) = self.old_size {
            println!("{:<44} {:>20}", "size: baseline failover", size);
        }
        println!("ratios (tandem over baseline; < 1 means tandem is faster or smaller):");
        println!(
            "  create time vs tar czf:                {:.2}",
            self.our_create.secs() / self.tar_create.secs()
        );
        println!(
            "  synced restore time vs tar xzf alone:  {:.2}",
            self.our_restore.secs() / self.tar_extract.secs()
        );
        println!(
            "  synced restore time vs tar xzf + sync: {:.2}",
            self.our_restore.secs() / self.tar_extract_sync.secs()
        );
        println!(
            "  synced restore time vs the disk's floor: {:.2}",
            self.our_restore.secs() / self.disk_floor.secs()
        );
        if let Some(old) = &self.old_restore {
            println!(
                "  synced restore time vs baseline build: {:.2}",
                self.our_restore.secs() / old.secs()
            );
        }
        println!(
            "  size vs tar czf:                       {:.3}",
            self.our_size as f64 / self.tar_size as f64
        );
    }

    fn json(&self, scale: &str, generated: &Generated) -> String {
        let opt = |s: &Option<Samples>| {
            s.as_ref()
                .map_or("null".to_owned(), |s| format!("{:.4}", s.secs()))
        };
        let opt_rss = |s: &Option<Samples>| {
            s.as_ref()
                .map_or("null".to_owned(), |s| format!("{:.1}", s.rss_mb()))
        };
        format!(
            concat!(
                "{{ \"scale\": \"{}\", \"tree\": {{ \"files\": {}, \"bytes\": {}, \"roots\": {} }}, ",
                "\"cores\": {}, \"runs\": {},\n",
                "  \"seconds\": {{ \"tar_czf\": {:.4}, \"tandem_create\": {:.4}, \"baseline_create\": {}, ",
                "\"tar_xzf\": {:.4}, \"tar_xzf_sync\": {:.4}, \"tandem_restore\": {:.4}, \"baseline_restore\": {}, ",
                "\"disk_floor\": {:.4} }},\n",
                "  \"peak_rss_mb\": {{ \"tar_czf\": {:.1}, \"tandem_create\": {:.1}, \"baseline_create\": {}, ",
                "\"tar_xzf\": {:.1}, \"tandem_restore\": {:.1}, \"baseline_restore\": {} }},\n",
                "  \"bytes\": {{ \"tar_czf\": {}, \"tandem\": {}, \"baseline\": {} }} }}"
            ),
            scale,
            generated.files,
            generated.bytes,
            ROOTS.len(),
            cores(),
            self.runs,
            self.tar_create.secs(),
            self.our_create.secs(),
            opt(&self.old_create),
            self.tar_extract.secs(),
            self.tar_extract_sync.secs(),
            self.our_restore.secs(),
            opt(&self.old_restore),
            self.disk_floor.secs(),
            self.tar_create.rss_mb(),
            self.our_create.rss_mb(),
            opt_rss(&self.old_create),
            self.tar_extract.rss_mb(),
            self.our_restore.rss_mb(),
            opt_rss(&self.old_restore),
            self.tar_size,
            self.our_size,
            self.old_size.map_or("null".to_owned(), |s| s.to_string()),
        )
    }

    /// Summary rows: create, synced restore, size; at 10x also peak RSS.
    fn rows(&self, generated: &Generated, ten: bool) -> Vec<super::Row> {
        let secs = |s: f64| format!("{s:.2} s");
        let mb = generated.bytes as f64 / 1e6;
        let what = format!(
            "{} files, {}",
            thousands(generated.files),
            if mb >= 1000.0 {
                format!("{:.1} GB", mb / 1000.0)
            } else {
                format!("{mb:.0} MB")
            }
        );
        let old = |s: &Option<Samples>| {
            s.as_ref().map_or(String::new(), |s| {
                format!("; baseline build {}", secs(s.secs()))
            })
        };
        let restore = self.our_restore.secs();
        let mut rows = vec![
            super::Row::new(
                "bundle",
                format!("create ({what})"),
                secs(self.our_create.secs()),
                format!(
                    "tar czf {}{}",
                    secs(self.tar_create.secs()),
                    old(&self.old_create)
                ),
            )
            .ratio(self.our_create.secs(), self.tar_create.secs()),
            // tandem's restore is durable (synced before the renames); the
            // goal is GNU tar's restore without any sync.
            super::Row::new(
                "bundle",
                format!("restore, synced ({what})"),
                secs(restore),
                format!(
                    "tar xzf {} (tar xzf + sync -f {}){}",
                    secs(self.tar_extract.secs()),
                    secs(self.tar_extract_sync.secs()),
                    old(&self.old_restore)
                ),
            )
            .ratio(restore, self.tar_extract.secs())
            .target("<= tar xzf alone", restore <= self.tar_extract.secs()),
            // What any durable restore must at least do: write the bytes and sync.
            super::Row::new(
                "bundle",
                format!("restore, synced, beside the disk's floor ({what})"),
                secs(restore),
                format!(
                    "the same bytes to one file + fsync {}",
                    secs(self.disk_floor.secs())
                ),
            )
            .ratio(restore, self.disk_floor.secs()),
        ];
        if ten {
            let rss = |s: f64| format!("{s:.0} MB");
            rows.push(
                super::Row::new(
                    "bundle",
                    format!("peak RSS, create ({what})"),
                    rss(self.our_create.rss_mb()),
                    format!("tar czf {}", rss(self.tar_create.rss_mb())),
                )
                .ratio(self.our_create.rss_mb(), self.tar_create.rss_mb()),
            );
            rows.push(
                super::Row::new(
                    "bundle",
                    format!("peak RSS, restore ({what})"),
                    rss(self.our_restore.rss_mb()),
                    format!("tar xzf {}", rss(self.tar_extract.rss_mb())),
                )
                .ratio(self.our_restore.rss_mb(), self.tar_extract.rss_mb()),
            );
        } else {
            let size_ratio = self.our_size as f64 / self.tar_size as f64;
            rows.push(
                super::Row::new(
                    "bundle",
                    "size",
                    format!("{:.1} MB", self.our_size as f64 / 1e6),
                    format!("tar czf {:.1} MB", self.tar_size as f64 / 1e6),
                )
                .ratio(self.our_size as f64, self.tar_size as f64)
                .target("<= 1.05 x tar", size_ratio <= 1.05),
            );
        }
        rows
    }
}

/// `60600` as `60,600`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The 10x tree: [`COPIES`] copies of the bench tree side by side in each root
/// (`<root>/copy-NN/...`).
fn generate_10x(tree: &Path, one: &Generated, big: &Path) -> anyhow::Result<Generated> {
    remove(big)?;
    println!(
        "copying the bench tree {COPIES} times under {} ...",
        big.display()
    );
    for root in ROOTS {
        let to = big.join(root);
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        for copy in 0..COPIES {
            sh(Command::new("cp")
                .arg("-a")
                .arg(tree.join(root))
                .arg(to.join(format!("copy-{copy:02}"))))?;
        }
    }
    Ok(Generated {
        files: one.files * COPIES as u64,
        bytes: one.bytes * COPIES as u64,
    })
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn node_config(tree: &Path) -> String {
    let mut config = String::from("[bundle]\n");
    for root in ROOTS {
        config.push_str(&format!(
            "\n[[bundle.roots]]\nname = \"{root}\"\npath = \"{}\"\n",
            tree.join(root).display()
        ));
    }
    config
}

/// Builds the release `failover` binary and returns its path.
fn build_failover() -> anyhow::Result<PathBuf> {
    let root = crate::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    sh(Command::new(cargo).current_dir(&root).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "failover",
    ]))
    .context("building failover")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_relative() {
        root.join(target)
    } else {
        target
    };
    let bin = target.join("release").join("failover");
    if !bin.exists() {
        bail!("built failover but found no {}", bin.display());
    }
    Ok(bin)
}

/// The bench tree under `target/bench/bundle-tree/` (generated on first use)
/// as a `[bundle]` table of its roots, and its number of files: what the
/// soak's `copy-config-files` loop sends.
pub(crate) fn bench_bundle() -> anyhow::Result<(tandem_bundle::BundleSpec, u64)> {
    let tree = crate::bench::output_dir()?.join("bundle-tree");
    let generated = generate(&tree)?;
    Ok((
        crate::site::config::bundle(&tree, &ROOTS, &[]),
        generated.files,
    ))
}

struct Generated {
    files: u64,
    bytes: u64,
}

/// The bench tree, generated once (deterministic content).
fn generate(tree: &Path) -> anyhow::Result<Generated> {
    let marker = tree.join(".generated");
    if let Ok(text) = std::fs::read_to_string(&marker)
        && let Some((version, rest)) = text.trim().split_once(' ')
        && version == TREE_VERSION
        && let Some((files, bytes)) = rest.split_once(' ')
    {
        return Ok(Generated {
            files: files.parse()?,
            bytes: bytes.parse()?,
        });
    }
    remove(tree)?;
    println!("generating the bench tree under {} ...", tree.display());
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut write = |path: PathBuf, data: Vec<u8>| -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        files += 1;
        bytes += data.len() as u64;
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
    };
    // Small config files: ~6000 of 1-20 KB of key = value text.
    for i in 0..6000u32 {
        let root = ROOTS.get((i % 2) as usize).copied().unwrap_or("web-conf");
        let dir = format!("{root}/module-{:02}/section-{:02}", i % 37, (i / 37) % 11);
        let path = tree.join(dir).join(format!("setting-{i:05}.conf"));
        let len = 1000 + (rng.next() % 19_000) as usize;
        write(path, config_text(&mut rng, len))?;
    }
    // Custom prompts: multi-megabyte 16-bit mono WAV recordings.
    for i in 0..60u32 {
        let seconds = 100 + (rng.next() % 100) as usize;
        let path = tree.join(format!(
            "prompts/custom/lang-{:02}/prompt-{i:03}.wav",
            i % 6
        ));
        write(path, wav(&mut rng, seconds))?;
    }
    std::fs::write(&marker, format!("{TREE_VERSION} {files} {bytes}\n"))?;
    // The marker is not part of any root.
    Ok(Generated { files, bytes })
}

fn config_text(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "timeout", "server", "port", "enabled", "ssl", "cipher", "locale", "prompt", "voice",
        "queue", "retry", "max", "min", "path", "user", "group",
    ];
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let a = WORDS
            .get((rng.next() % 16) as usize)
            .copied()
            .unwrap_or("key");
        let b = WORDS
            .get((rng.next() % 16) as usize)
            .copied()
            .unwrap_or("value");
        let line = match rng.next() % 4 {
            0 => format!("{a}.{b} = {}\n", rng.next() % 100_000),
            1 => format!(
                "{a}_{b} = \"/opt/meetingplace/{b}/{a}-{}\"\n",
                rng.next() % 1000
            ),
            2 => format!("# {a} {b} {:08x}\n", rng.next() as u32),
            _ => format!("[{a}-{}]\n", rng.next() % 64),
        };
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// A WAV file: 8 kHz, 16-bit mono, tones with noise (compresses like speech).
fn wav(rng: &mut Rng, seconds: usize) -> Vec<u8> {
    let samples = 8000 * seconds;
    let data_len = (samples * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    let f1 = 200.0 + (rng.next() % 300) as f64;
    let f2 = 700.0 + (rng.next() % 900) as f64;
    for n in 0..samples {
        let t = n as f64 / 8000.0;
        // Syllable-like bursts: on for ~0.3 s, quieter between.
        let envelope = if (n / 2400) % 3 == 2 { 0.05 } else { 1.0 };
        let tone = (t * f1 * std::f64::consts::TAU).sin() * 6000.0
            + (t * f2 * std::f64::consts::TAU).sin() * 2500.0;
        let noise = ((rng.next() % 512) as f64) - 256.0;
        let sample = (tone * envelope + noise) as i16;
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

/// xorshift64*: deterministic content without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdout(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Writes `bytes` of incompressible data to a new file at `path` and fsyncs it: the
/// disk's part of a durable restore of that many bytes, with nothing else. The
/// data is generated before the clock starts (a virtual disk may treat zeros
/// specially); the file is removed after.
fn durable_write(path: &Path, bytes: u64) -> anyhow::Result<Sample> {
    use std::io::Write;
    const CHUNK: usize = 4 << 20;
    let mut rng = Rng(0x5eed_f100_d15c_0002);
    let chunk: Vec<u8> = (0..CHUNK / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    let start = Instant::now();
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let part = chunk.get(..n).unwrap_or(&chunk);
        file.write_all(part)
            .with_context(|| format!("writing {}", path.display()))?;
        left -= part.len() as u64;
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    let time = start.elapsed();
    drop(file);
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(Sample { time, rss: 0 })
}

/// Runs `cmd` to its end and returns its wall time and peak RSS (the
/// child's `ru_maxrss` from `wait4`, which includes the children it waited
/// for). Its stdout is dropped; a failure is an error with the command.
fn measured(cmd: &mut Command) -> anyhow::Result<Sample> {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("running {shown}"))?;
    let pid = libc::pid_t::try_from(child.id()).context("process id")?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = loop {
        // SAFETY: `pid` is our own child, not yet waited for (`child` is
        // never waited on through std); both pointers are to live locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break rc;
    };
    let time = start.elapsed();
    drop(child);
    if waited != pid {
        bail!("waiting for {shown}: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{shown} failed (wait status {status})");
    }
    Ok(Sample {
        time,
        rss: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}
