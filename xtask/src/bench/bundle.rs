//! `cargo xtask bench bundle`: config-file bundles beside GNU tar.
//!
//! Generates a ~200 MB tree once under `target/bench/bundle-tree/` (thousands of
//! small config files in three roots plus multi-megabyte `.wav` prompts), then in
//! one run times, each as the median of [`RUNS`]:
//! - `tar czf` of the tree and `failover copy-config-files` of the same roots;
//! - `tar xzf` into an empty directory (also followed by `sync -f`, because a
//!   restore makes its staging durable before it renames) and
//!   `failover restore-config-files --root` into an empty directory;
//!
//! and compares the sizes. The tool runs as users run it: the release build of
//! the `failover` binary. Results print as a table and go to
//! `target/bench/bundle.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Timed runs per measurement (the median is reported).
const RUNS: usize = 5;
/// Bump to regenerate the tree when the generator changes.
const TREE_VERSION: &str = "1";
/// The roots of the bench tree.
const ROOTS: [&str; 3] = ["enrollment", "web-conf", "prompts"];

pub(crate) fn run() -> anyhow::Result<Vec<super::Row>> {
    let out = crate::bench::output_dir()?;
    let tree = out.join("bundle-tree");
    let generated = generate(&tree)?;
    let failover = build_failover()?;
    let work = out.join("bundle-work");
    remove(&work)?;
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let config = work.join("node.toml");
    std::fs::write(&config, node_config(&tree)).context("writing the bench node config")?;

    // Warm the page cache so both tools read the tree from memory.
    sh(Command::new("tar")
        .args(["cf", "/dev/null", "-C"])
        .arg(&tree)
        .arg("."))?;

    let tar_gz = work.join("gnu.tar.gz");
    let ours = work.join("tandem.tar.gz");
    let tar_create = median(|| {
        time(|| {
            sh(Command::new("tar")
                .arg("czf")
                .arg(&tar_gz)
                .arg("-C")
                .arg(&tree)
                .args(ROOTS))
        })
    })?;
    let our_create = median(|| {
        time(|| {
            sh(Command::new(&failover)
                .arg("--config")
                .arg(&config)
                .arg("copy-config-files")
                .arg("--output")
                .arg(&ours))
        })
    })?;
    let tar_size = std::fs::metadata(&tar_gz)?.len();
    let our_size = std::fs::metadata(&ours)?.len();
    // Our bundle stays a .tar.gz GNU tar reads (multi-member gzip).
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
    let tar_extract = median(|| {
        fresh(&dest)?;
        time(|| {
            sh(Command::new("tar")
                .arg("xzf")
                .arg(&tar_gz)
                .arg("-C")
                .arg(&dest))
        })
    })?;
    let tar_extract_sync = median(|| {
        fresh(&dest)?;
        time(|| {
            sh(Command::new("tar")
                .arg("xzf")
                .arg(&tar_gz)
                .arg("-C")
                .arg(&dest))?;
            sh(Command::new("sync").arg("-f").arg(&dest))
        })
    })?;
    let state = work.join("state");
    let our_restore = median(|| {
        fresh(&dest)?;
        remove(&state)?;
        time(|| {
            sh(Command::new(&failover)
                .arg("--state-dir")
                .arg(&state)
                .arg("--config")
                .arg(&config)
                .arg("restore-config-files")
                .arg("--bundle")
                .arg(&ours)
                .arg("--root")
                .arg(&dest))
        })
    })?;
    remove(&dest)?;

    let mb = generated.bytes as f64 / 1e6;
    let rate = |d: Duration| mb / d.as_secs_f64();
    println!(
        "bundle: {} files, {:.1} MB in {} roots ({} cores)",
        generated.files,
        mb,
        ROOTS.len(),
        cores()
    );
    println!("{:<44} {:>9} {:>10}", "operation", "seconds", "MB/s");
    let rows = [
        ("create: GNU tar czf", tar_create),
        ("create: failover copy-config-files", our_create),
        ("restore: GNU tar xzf", tar_extract),
        ("restore: GNU tar xzf + sync -f", tar_extract_sync),
        ("restore: failover restore-config-files", our_restore),
    ];
    for (name, d) in rows {
        println!("{name:<44} {:>9.3} {:>10.1}", d.as_secs_f64(), rate(d));
    }
    println!("{:<44} {:>20}", "size: GNU tar czf", tar_size);
    println!(
        "{:<44} {:>20}",
        "size: failover copy-config-files", our_size
    );
    let create_speedup = tar_create.as_secs_f64() / our_create.as_secs_f64();
    let restore_speedup = tar_extract.as_secs_f64() / our_restore.as_secs_f64();
    let restore_speedup_sync = tar_extract_sync.as_secs_f64() / our_restore.as_secs_f64();
    let size_ratio = our_size as f64 / tar_size as f64;
    println!("ratios (>1 means tandem is faster; target: >= 1.0 at <= 1.05 of the size):");
    println!("  create speed vs tar czf:               {create_speedup:.2}");
    println!("  restore speed vs tar xzf:              {restore_speedup:.2}");
    println!("  restore speed vs tar xzf + sync -f:    {restore_speedup_sync:.2}");
    println!("  size vs tar czf:                       {size_ratio:.3}");

    let json = format!(
        concat!(
            "{{\n  \"tree\": {{ \"files\": {}, \"bytes\": {}, \"roots\": {} }},\n",
            "  \"cores\": {},\n  \"runs\": {},\n",
            "  \"seconds\": {{ \"tar_czf\": {:.4}, \"tandem_create\": {:.4}, \"tar_xzf\": {:.4}, ",
            "\"tar_xzf_sync\": {:.4}, \"tandem_restore\": {:.4} }},\n",
            "  \"bytes\": {{ \"tar_czf\": {}, \"tandem\": {} }},\n",
            "  \"ratios\": {{ \"create_speed\": {:.4}, \"restore_speed\": {:.4}, ",
            "\"restore_speed_vs_synced_tar\": {:.4}, \"size\": {:.4} }}\n}}\n"
        ),
        generated.files,
        generated.bytes,
        ROOTS.len(),
        cores(),
        RUNS,
        tar_create.as_secs_f64(),
        our_create.as_secs_f64(),
        tar_extract.as_secs_f64(),
        tar_extract_sync.as_secs_f64(),
        our_restore.as_secs_f64(),
        tar_size,
        our_size,
        create_speedup,
        restore_speedup,
        restore_speedup_sync,
        size_ratio,
    );
    let path = out.join("bundle.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!("results: {}", path.display());
    remove(&work)?;
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let what = format!("{} files, {mb:.0} MB", generated.files);
    Ok(vec![
        super::Row::new(
            "bundle",
            format!("create ({what})"),
            secs(our_create),
            format!("tar czf {}", secs(tar_create)),
        )
        .ratio(our_create.as_secs_f64(), tar_create.as_secs_f64()),
        // tandem's restore is durable (synced before the renames); GNU tar's
        // is compared with a sync -f after it, and named without.
        super::Row::new(
            "bundle",
            format!("restore, synced ({what})"),
            secs(our_restore),
            format!(
                "tar xzf + sync -f {} (tar xzf alone {})",
                secs(tar_extract_sync),
                secs(tar_extract)
            ),
        )
        .ratio(our_restore.as_secs_f64(), tar_extract_sync.as_secs_f64())
        .target(
            "<= tar xzf + sync, + 5 %",
            restore_speedup_sync >= 1.0 / 1.05,
        ),
        super::Row::new(
            "bundle",
            "size",
            format!("{:.1} MB", our_size as f64 / 1e6),
            format!("tar czf {:.1} MB", tar_size as f64 / 1e6),
        )
        .ratio(our_size as f64, tar_size as f64)
        .target("<= 1.05 x tar", size_ratio <= 1.05),
    ])
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

fn time(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

fn median(mut f: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Duration> {
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(f()?);
    }
    runs.sort();
    runs.get(RUNS / 2).copied().context("no runs")
}
