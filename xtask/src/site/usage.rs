//! Memory and CPU of the site's processes, read from `/proc` (the bench's and
//! the demo's measure of the agents).

use std::process::Command;
use std::time::Duration;

use tandem_lab::Host;

/// Each process's resident memory (KiB, with its children) at the end of `window`
/// and its CPU over it (% of a core); processes already gone are left out.
pub(crate) fn usage_over(pids: &[(Host, u32)], window: Duration) -> Vec<(Host, u64, f64)> {
    let before: Vec<(Host, u32, u64)> = pids
        .iter()
        .filter_map(|&(h, pid)| cpu_ticks(pid).map(|t| (h, pid, t)))
        .collect();
    std::thread::sleep(window);
    let ticks = ticks_per_second();
    before
        .into_iter()
        .map(|(host, pid, t0)| {
            let used = cpu_ticks(pid).unwrap_or(t0).saturating_sub(t0);
            let cpu = used as f64 / ticks / window.as_secs_f64() * 100.0;
            (host, rss_kib(pid), cpu)
        })
        .collect()
}

/// utime + stime of `pid` and its children that are still running (keepalived's
/// VRRP child), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let mut total = 0;
    for p in family(pid) {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        total += utime + stime;
    }
    Some(total)
}

/// `pid` and its direct children.
fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    family(pid)
        .into_iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

pub(crate) fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
