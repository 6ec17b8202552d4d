//! The life of one node's process as the supervisor sees it: a pure state machine.
//!
//! The node's task ([`super::node`]) feeds it what happened — an operator asked to
//! start or stop the node, the process was spawned, answered `/healthz`, exited — and
//! does what it answers (spawn, signal, reply). It does no I/O and reads no clock, so
//! every rule below is a unit test.
//!
//! Rules:
//! - A node is started only when no process of it is left: a stopped node whose process
//!   has not been reaped yet cannot be started twice.
//! - A stop is sent only to a live process with a positive pid (0 and negative pids name
//!   process groups: `kill(0, …)` would signal the supervisor's own group).
//! - An exit nobody asked for is reported once, with its status; it stays down until an
//!   operator starts it again (no restart loop).
//! - SIGKILL wins over a stop in progress: the node is shown killed.

use std::fmt;

/// Where a node's process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// Never started.
    NotStarted,
    /// Spawned, not yet answering `/healthz` with 200.
    Starting,
    /// Answered `/healthz` with 200.
    Running,
    /// Asked to stop (SIGTERM), not yet exited.
    Stopping,
    /// Exited after a stop.
    Stopped,
    /// SIGKILLed by an operator (exited or about to).
    Killed,
    /// Exited on its own, with this status.
    Exited(String),
}

impl State {
    /// Whether the process is (or may still be) alive.
    pub(crate) fn alive(&self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::NotStarted => f.write_str("not started"),
            State::Starting => f.write_str("starting"),
            State::Running => f.write_str("running"),
            State::Stopping => f.write_str("stopping"),
            State::Stopped => f.write_str("stopped"),
            State::Killed => f.write_str("killed"),
            State::Exited(why) => write!(f, "exited ({why})"),
        }
    }
}

/// How an operator stops a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGTERM: the node drains and exits; the supervisor escalates after a deadline.
    Graceful,
    /// SIGKILL: a crash, as drills and `hastack kill` want it.
    Kill,
}

/// What the supervisor publishes about one node (on its `watch` channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    /// Where the process is.
    pub(crate) state: State,
    /// Its pid while one exists (alive or not yet reaped).
    pub(crate) pid: Option<u32>,
    /// How many processes of this node have been spawned.
    pub(crate) generation: u64,
}

/// One node's lifecycle.
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    view: View,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            view: View {
                state: State::NotStarted,
                pid: None,
                generation: 0,
            },
        }
    }
}

impl Lifecycle {
    /// What is published.
    pub(crate) fn view(&self) -> &View {
        &self.view
    }

    /// May a process be spawned now? `Err` says why not.
    pub(crate) fn may_start(&self) -> Result<(), String> {
        if self.view.state.alive() {
            return Err(format!("is already {}", self.view.state));
        }
        if self.view.pid.is_some() {
            return Err(format!(
                "is {} but its process has not exited yet; try again",
                self.view.state
            ));
        }
        Ok(())
    }

    /// A process was spawned with `pid`. A pid of 0 is refused (it could only reach
    /// `kill` as "my own process group").
    pub(crate) fn spawned(&mut self, pid: u32) -> Result<(), String> {
        self.may_start()?;
        if pid == 0 || i32::try_from(pid).is_err() {
            return Err(format!("has an invalid process id {pid}"));
        }
        self.view.generation += 1;
        self.view.state = State::Starting;
        self.view.pid = Some(pid);
        Ok(())
    }

    /// It answered `/healthz` with 200. Only a starting node becomes running (a probe
    /// that answers after a stop was asked changes nothing).
    pub(crate) fn ready(&mut self) -> bool {
        if self.view.state == State::Starting {
            self.view.state = State::Running;
            true
        } else {
            false
        }
    }

    /// An operator asks it to stop: the pid to signal, or why there is none.
    pub(crate) fn stop(&mut self, how: Stop) -> Result<i32, String> {
        let pid = self
            .view
            .pid
            .filter(|_| self.view.state.alive())
            .ok_or_else(|| format!("is not running ({})", self.view.state))?;
        let pid = i32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("has an invalid process id {pid}"))?;
        self.view.state = match how {
            Stop::Kill => State::Killed,
            Stop::Graceful => State::Stopping,
        };
        Ok(pid)
    }

    /// The process exited with `status`. Returns the status when nobody asked it to
    /// stop (an exit to report).
    pub(crate) fn exited(&mut self, status: String) -> Option<String> {
        self.view.pid = None;
        let (state, unexpected) = match &self.view.state {
            State::Stopping => (State::Stopped, None),
            State::Killed => (State::Killed, None),
            _ => (State::Exited(status.clone()), Some(status)),
        };
        self.view.state = state;
        unexpected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(pid: u32) -> Lifecycle {
        let mut l = Lifecycle::default();
        l.spawned(pid).expect("spawn");
        assert!(l.ready());
        l
    }

    #[test]
    fn a_node_starts_then_runs_once_it_answers() {
        let mut l = Lifecycle::default();
        assert_eq!(l.view().state, State::NotStarted);
        l.spawned(42).expect("spawn");
        assert_eq!(l.view().state, State::Starting);
        assert_eq!(l.view().pid, Some(42));
        assert_eq!(l.view().generation, 1);
        assert!(l.ready());
        assert_eq!(l.view().state, State::Running);
    }

    #[test]
    fn pid_zero_never_becomes_a_target_of_kill() {
        // Rule: 0 and negative pids name process groups.
        let mut l = Lifecycle::default();
        assert!(l.spawned(0).is_err());
        assert!(l.spawned(u32::MAX).is_err());
        assert_eq!(l.view().state, State::NotStarted);
        assert!(l.stop(Stop::Kill).is_err());
    }

    #[test]
    fn a_live_node_cannot_be_started_twice() {
        let mut l = running(7);
        assert_eq!(l.may_start(), Err("is already running".to_string()));
        assert!(l.spawned(8).is_err());
        assert_eq!(l.view().pid, Some(7));
    }

    #[test]
    fn a_stopped_node_whose_process_is_not_reaped_cannot_be_started() {
        // Rule: started only when no process of it is left.
        let mut l = running(7);
        assert_eq!(l.stop(Stop::Graceful), Ok(7));
        assert_eq!(l.view().state, State::Stopping);
        assert!(l.may_start().is_err());
        assert_eq!(l.exited("signal: 15".into()), None);
        assert_eq!(l.view().state, State::Stopped);
        assert_eq!(l.may_start(), Ok(()));
        l.spawned(9).expect("restart");
        assert_eq!(l.view().generation, 2);
    }

    #[test]
    fn an_exit_nobody_asked_for_is_reported_and_stays_down() {
        let mut l = running(7);
        assert_eq!(
            l.exited("exit status: 1".into()),
            Some("exit status: 1".into())
        );
        assert_eq!(l.view().state, State::Exited("exit status: 1".into()));
        assert_eq!(
            l.view().to_owned().state.to_string(),
            "exited (exit status: 1)"
        );
        assert!(!l.view().state.alive());
        assert!(l.stop(Stop::Graceful).is_err());
    }

    #[test]
    fn a_kill_wins_over_a_stop_in_progress() {
        let mut l = running(7);
        l.stop(Stop::Graceful).expect("stop");
        assert_eq!(l.stop(Stop::Kill), Ok(7));
        assert_eq!(l.exited("signal: 9".into()), None);
        assert_eq!(l.view().state, State::Killed);
    }

    #[test]
    fn a_late_probe_does_not_revive_a_stopping_node() {
        let mut l = Lifecycle::default();
        l.spawned(7).expect("spawn");
        l.stop(Stop::Graceful).expect("stop");
        assert!(!l.ready());
        assert_eq!(l.view().state, State::Stopping);
    }

    #[test]
    fn a_node_that_dies_while_starting_is_reported() {
        let mut l = Lifecycle::default();
        l.spawned(7).expect("spawn");
        assert!(l.exited("exit status: 2".into()).is_some());
        assert!(!l.ready());
    }
}
