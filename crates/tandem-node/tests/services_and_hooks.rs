//! Services and hooks run as real shell commands: order, rollback of a failed
//! start, time limits that kill the whole process group, and the hook environment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use tandem_node::{HookRunner, Hooks, RunOn, ServiceSpec, Services, ShellError};
use tandem_role::{Epoch, Hook, NodeId, NodeState, Role, SiteId};

fn service(name: &str, log: &Path, run_on: RunOn) -> ServiceSpec {
    let log = log.display();
    ServiceSpec {
        name: name.into(),
        start: format!("echo start {name} >> {log}"),
        stop: format!("echo stop {name} >> {log}"),
        run_on,
        timeout_ms: 5_000,
    }
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn services_start_in_order_and_stop_in_reverse_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let services = Services::new(vec![
        service("database", &log, RunOn::Always),
        service("web", &log, RunOn::Active),
        service("conference", &log, RunOn::Active),
    ]);
    services.start(RunOn::Active).await.unwrap();
    services.stop(RunOn::Active).await.unwrap();
    assert_eq!(
        log_lines(&log),
        [
            "start web",
            "start conference",
            "stop conference",
            "stop web"
        ]
    );
    services.start(RunOn::Always).await.unwrap();
    assert_eq!(
        log_lines(&log).last().map(String::as_str),
        Some("start database")
    );
}

#[tokio::test]
async fn a_failed_start_stops_what_was_started_and_names_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut broken = service("conference", &log, RunOn::Active);
    broken.start = "printf 'license server %s\\n' unreachable >&2; exit 3".into();
    let services = Services::new(vec![service("web", &log, RunOn::Active), broken]);
    let err = services.start(RunOn::Active).await.expect_err("must fail");
    assert_eq!(err.service, "conference");
    let message = err.to_string();
    assert!(
        matches!(&err.source, ShellError::Failed { output, .. } if output == "license server unreachable"),
        "{err:?}"
    );
    assert!(message.contains("exit status: 3"), "{message}");
    assert_eq!(log_lines(&log), ["start web", "stop web"]);
}

#[tokio::test]
async fn stop_asks_every_service_even_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut stubborn = service("conference", &log, RunOn::Active);
    stubborn.stop = "exit 1".into();
    let services = Services::new(vec![service("web", &log, RunOn::Active), stubborn]);
    let err = services.stop(RunOn::Active).await.expect_err("must report");
    assert_eq!(err.service, "conference");
    assert_eq!(log_lines(&log), ["stop web"]);
}

#[tokio::test]
async fn a_command_past_its_limit_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let mut hung = service("hung", &dir.path().join("log"), RunOn::Active);
    hung.start = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    hung.timeout_ms = 300;
    let err = Services::new(vec![hung])
        .start(RunOn::Active)
        .await
        .expect_err("timeout");
    assert!(matches!(err.source, ShellError::Timeout { .. }), "{err}");
    let child: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The killed child may linger as a zombie of init for a moment; it must not run.
    let mut alive = true;
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        alive = !(stat.is_empty() || stat.contains(") Z"));
        if !alive {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !alive,
        "the service's child {child} survived the time limit"
    );
}

fn state() -> NodeState {
    let mut s = NodeState::first_boot(NodeId::Two, SiteId::ONE);
    s.role = Role::Active;
    s.epoch = Epoch::new(7);
    s
}

#[tokio::test]
async fn hooks_get_the_event_reason_and_node_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook.out");
    let hooks = Hooks {
        active: Some(format!(
            "echo \"$1|$2|$TANDEM_HOOK|$TANDEM_NODE|$TANDEM_ROLE|$TANDEM_EPOCH|$TANDEM_REASON\" > {}",
            out.display()
        )),
        fault: Some("printf 'disk %s\\n' full >&2; exit 2".into()),
        timeout_ms: 5_000,
        ..Hooks::default()
    };
    let runner = HookRunner::new(hooks);
    assert!(
        runner
            .run(Hook::Active, "operator: set-server active", &state())
            .await
            .unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "active|operator: set-server active|active|2|active|7|operator: set-server active"
    );
    assert!(
        !runner
            .run(Hook::Standby, "no hook configured", &state())
            .await
            .unwrap()
    );
    let err = runner
        .run(Hook::Fault, "x", &state())
        .await
        .expect_err("fails");
    assert!(
        matches!(&err, ShellError::Failed { output, .. } if output == "disk full"),
        "{err:?}"
    );
}
