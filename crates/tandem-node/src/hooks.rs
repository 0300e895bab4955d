//! Notify hooks, run like keepalived's notify scripts: `sh -c HOOK tandem EVENT
//! REASON`, with `TANDEM_HOOK`, `TANDEM_REASON`, `TANDEM_NODE`, `TANDEM_ROLE` and
//! `TANDEM_EPOCH` in the environment. A failing hook is reported, never fatal.

use std::time::Duration;

use tandem_role::{Hook, NodeState};

use crate::config::Hooks;
use crate::shell::{self, ShellError};

/// Runs the configured hooks.
#[derive(Debug, Clone, Default)]
pub struct HookRunner {
    hooks: Hooks,
}

impl HookRunner {
    /// Hooks from the node config.
    pub fn new(hooks: Hooks) -> HookRunner {
        HookRunner { hooks }
    }

    /// Runs the hook for `hook`, if one is configured, with the node's state in
    /// its environment. `Ok(false)` when none is configured.
    pub async fn run(
        &self,
        hook: Hook,
        reason: &str,
        state: &NodeState,
    ) -> Result<bool, ShellError> {
        let command = match hook {
            Hook::Active => &self.hooks.active,
            Hook::Standby => &self.hooks.standby,
            Hook::Fault => &self.hooks.fault,
            Hook::Alarm => &self.hooks.alarm,
        };
        let Some(command) = command else {
            return Ok(false);
        };
        let event = hook.to_string();
        let env = [
            ("TANDEM_HOOK", event.clone()),
            ("TANDEM_REASON", reason.to_string()),
            ("TANDEM_NODE", state.node.to_string()),
            ("TANDEM_ROLE", state.role.to_string()),
            ("TANDEM_EPOCH", state.epoch.to_string()),
        ];
        let limit = Duration::from_millis(self.hooks.timeout_ms);
        shell::run(command, &[&event, reason], &env, limit).await?;
        Ok(true)
    }
}
