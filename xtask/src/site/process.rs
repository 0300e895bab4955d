//! Process and file-system helpers of the site harness: commands with a time
//! limit, a tmpfs for a node's state directory, and the sweep of what runs
//! killed before their cleanup left behind.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Runs `cmd`, killing it when it takes longer than `within`.
pub(crate) fn output_within(mut cmd: Command, within: Duration) -> anyhow::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a command")?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("{cmd:?} did not finish within {within:?}")
        }
    }
}

/// Waits up to `within` for `child` to exit; kills it if it does not (false).
pub(crate) fn wait_child(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Writes `path` until its file system is full.
pub(crate) fn fill(path: &Path) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
            Err(e) => return Err(e).context("filling the disk"),
        }
    }
    // Whatever small space is left goes too.
    let small = [0u8; 512];
    while file.write(&small).is_ok_and(|n| n > 0) {}
    Ok(())
}

/// A tmpfs mounted for one trial, unmounted on drop (also while a panic unwinds).
pub(crate) struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(path: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mount -t tmpfs on {} failed ({status})", path.display());
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Kills every process whose command line names `dir` (the PostgreSQL servers of
/// a trial, whoever started them: the lab, the agents or the tools).
pub(crate) fn kill_processes_naming(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The PostgreSQL servers and directories of chaos runs that died before
/// cleaning up (`/tmp/tandem-chaos-pg-<pid>-...` of a process that is gone).
pub(crate) fn sweep_stale_postgres() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("tandem-chaos-pg-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            kill_processes_naming(&entry.path());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Unmounts the tmpfs of chaos runs that were killed before they could.
pub(crate) fn sweep_stale_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let Some(point) = line.split_whitespace().nth(1) else {
            continue;
        };
        let Some(rest) = point.split("/tandem-chaos-").nth(1) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
}
