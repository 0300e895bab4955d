//! Services that follow the role: the active-only ones start when the node becomes
//! active and stop when it becomes standby; the "always" ones run on both nodes.
//! Start in the order configured, stop in reverse.

use std::time::Duration;

use crate::config::{RunOn, ServiceSpec};
use crate::shell::{self, ShellError};

/// A service failed to start or stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {action} failed: {source}")]
pub struct ServiceError {
    /// The service's name.
    pub service: String,
    /// `start` or `stop`.
    pub action: &'static str,
    /// What the command did.
    #[source]
    pub source: ShellError,
}

/// The configured services.
#[derive(Debug, Clone, Default)]
pub struct Services {
    specs: Vec<ServiceSpec>,
}

impl Services {
    /// Services from the node config, in their configured order.
    pub fn new(specs: Vec<ServiceSpec>) -> Services {
        Services { specs }
    }

    fn of(&self, which: RunOn) -> impl DoubleEndedIterator<Item = &ServiceSpec> {
        self.specs.iter().filter(move |s| s.run_on == which)
    }

    /// Starts the services of one kind in order. If one fails, those already
    /// started are stopped again (in reverse) and the failure is returned, so the
    /// node is never left with half its services running.
    pub async fn start(&self, which: RunOn) -> Result<(), ServiceError> {
        let mut started: Vec<&ServiceSpec> = Vec::new();
        for spec in self.of(which) {
            if let Err(source) = run(spec, &spec.start, "start").await {
                for done in started.iter().rev() {
                    if let Err(e) = run(done, &done.stop, "stop").await {
                        tracing::warn!(service = %done.name, error = %e, "stop after a failed start failed");
                    }
                }
                return Err(ServiceError {
                    service: spec.name.clone(),
                    action: "start",
                    source,
                });
            }
            tracing::info!(service = %spec.name, "started");
            started.push(spec);
        }
        Ok(())
    }

    /// Stops the services of one kind in reverse order. Every service is asked to
    /// stop even when an earlier one fails; the first failure is returned.
    pub async fn stop(&self, which: RunOn) -> Result<(), ServiceError> {
        let mut first = None;
        for spec in self.of(which).rev() {
            match run(spec, &spec.stop, "stop").await {
                Ok(()) => tracing::info!(service = %spec.name, "stopped"),
                Err(source) => {
                    tracing::warn!(service = %spec.name, error = %source, "stop failed");
                    first.get_or_insert(ServiceError {
                        service: spec.name.clone(),
                        action: "stop",
                        source,
                    });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

async fn run(spec: &ServiceSpec, command: &str, action: &'static str) -> Result<(), ShellError> {
    let env = [
        ("TANDEM_SERVICE", spec.name.clone()),
        ("TANDEM_ACTION", action.to_string()),
    ];
    shell::run(
        command,
        &[action],
        &env,
        Duration::from_millis(spec.timeout_ms),
    )
    .await
    .map(drop)
}
