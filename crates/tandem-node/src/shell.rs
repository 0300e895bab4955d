//! Running the operator's shell commands (services and hooks) with a time limit.
//! One function serves both, so both kill a command's whole process group when it
//! runs too long and report its output the same way.

use std::time::Duration;

use tokio::process::Command;

/// Why a shell command did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShellError {
    /// `sh` could not be started.
    #[error("cannot start `sh -c {command}`: {reason}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        reason: String,
    },
    /// The command ran past its time limit and was killed with its process group.
    #[error("`{command}` did not finish within {} ms and was killed", limit.as_millis())]
    Timeout {
        /// The command.
        command: String,
        /// The limit.
        limit: Duration,
    },
    /// The command exited non-zero.
    #[error("`{command}` failed ({status}){}", output_suffix(.output))]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed (stdout and stderr).
        output: String,
    },
}

fn output_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}

/// Runs `sh -c command name args...` with `env`, killing its process group after
/// `limit`. Returns what it printed.
pub(crate) async fn run(
    command: &str,
    args: &[&str],
    env: &[(&str, String)],
    limit: Duration,
) -> Result<String, ShellError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).arg("tandem").args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.stdin(std::process::Stdio::null());
    cmd.stdout(std::process::Stdio::piped());
    cmd.stderr(std::process::Stdio::piped());
    cmd.process_group(0);
    cmd.kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| ShellError::Spawn {
        command: command.to_string(),
        reason: e.to_string(),
    })?;
    let pid = child.id();
    let waited = tokio::time::timeout(limit, child.wait_with_output()).await;
    let Ok(result) = waited else {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // The shell may have started children; end the whole group.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return Err(ShellError::Timeout {
            command: command.to_string(),
            limit,
        });
    };
    let out = result.map_err(|e| ShellError::Spawn {
        command: command.to_string(),
        reason: e.to_string(),
    })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = tail(text.trim(), 2000);
    if out.status.success() {
        Ok(text)
    } else {
        Err(ShellError::Failed {
            command: command.to_string(),
            status: out.status.to_string(),
            output: text,
        })
    }
}

/// The last `max` bytes of `text`, cut at a character boundary, marked `...`.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let start = text.ceil_char_boundary(text.len() - max);
    format!("...{}", text.get(start..).unwrap_or_default())
}

/// The first `max` bytes of `text`, cut at a character boundary, marked `...`.
pub(crate) fn head(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let end = text.floor_char_boundary(max);
    format!("{}...", text.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Both ends of a text are cut at a character boundary, marked, never longer
        /// than the limit, and left whole when the text fits.
        #[test]
        fn a_text_is_cut_at_a_character(text in ".{0,80}", max in 0usize..60) {
            let (first, last) = (head(&text, max), tail(&text, max));
            if text.len() <= max {
                prop_assert_eq!(&first, &text);
                prop_assert_eq!(&last, &text);
            } else {
                let kept = first.strip_suffix("...").expect("marked as cut");
                prop_assert!(kept.len() <= max && text.starts_with(kept));
                let kept = last.strip_prefix("...").expect("marked as cut");
                prop_assert!(kept.len() <= max && text.ends_with(kept));
            }
        }
    }
}
