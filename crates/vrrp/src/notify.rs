//! The `vrrp.notify` command: run with `INSTANCE STATE PRIORITY` at each state change,
//! one at a time and in the order the changes happened.
//!
//! keepalived forks a notify script per change, so two quick changes can run out of
//! order and a script can see BACKUP after MASTER when the truth is MASTER. Here the
//! runner pushes each change into a queue and a single worker runs the commands
//! sequentially, each bounded by [`NOTIFY_TIMEOUT`] (then killed), so a hung script
//! delays later notifications but never the VRRP timers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::machine::State;
use crate::stats::Stats;

/// How long one notify command may run before it is killed.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// One state change, as handed to the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The state entered.
    pub state: State,
    /// The priority this node advertises in it (0 in FAULT and STOP).
    pub priority: u8,
}

/// keepalived's state word for the command's second argument.
pub fn state_word(s: State) -> &'static str {
    match s {
        State::Master => "MASTER",
        State::Backup => "BACKUP",
        State::Fault => "FAULT",
        State::Initialize => "STOP",
    }
}

/// The sending side of the queue.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Event>,
}

impl Notifier {
    /// Starts the worker on the current runtime: each event runs
    /// `sh -c '<command> "$@"' hastack-notify INSTANCE STATE PRIORITY`.
    pub fn spawn(
        command: String,
        instance: String,
        stats: Arc<Stats>,
    ) -> (Notifier, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let task = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let ok = run_one(&command, &instance, &ev).await;
                if !ok {
                    stats.notify_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        (Notifier { tx }, task)
    }

    /// Queues an event (never blocks).
    pub fn push(&self, ev: Event) {
        let _ = self.tx.send(ev);
    }
}

async fn run_one(command: &str, instance: &str, ev: &Event) -> bool {
    let state = state_word(ev.state);
    let priority = ev.priority.to_string();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("{command} \"$@\""))
        .arg("hastack-notify")
        .args([instance, state, &priority])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            warn!(command, error = %e, "vrrp notify: cannot run");
            return false;
        }
    };
    match tokio::time::timeout(NOTIFY_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            debug!(command, state, "vrrp notify done");
            true
        }
        Ok(Ok(status)) => {
            warn!(command, state, %status, "vrrp notify failed");
            false
        }
        Ok(Err(e)) => {
            warn!(command, state, error = %e, "vrrp notify: wait failed");
            false
        }
        Err(_) => {
            let _ = child.kill().await;
            warn!(
                command,
                state, "vrrp notify killed after {NOTIFY_TIMEOUT:?}"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_reach_the_command_one_at_a_time_in_order() {
        let dir = std::env::temp_dir().join(format!("hastack-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        // A slow command: if two ran at once, or out of order, the lines would show it.
        let script = dir.join("notify.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"start $1 $2 $3\" >> {log}\nsleep 0.05\necho \"end $2\" >> {log}\n",
                log = log.display()
            ),
        )
        .expect("script");
        let stats = Arc::new(Stats::default());
        let (n, task) = Notifier::spawn(
            format!("sh {}", script.display()),
            "vrid51".into(),
            stats.clone(),
        );
        let seq = [State::Backup, State::Master, State::Fault, State::Backup];
        for (i, s) in seq.iter().enumerate() {
            n.push(Event {
                state: *s,
                priority: i as u8,
            });
        }
        drop(n);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("worker ends when the queue closes")
            .expect("join");
        let text = std::fs::read_to_string(&log).expect("log");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec![
                "start vrid51 BACKUP 0",
                "end BACKUP",
                "start vrid51 MASTER 1",
                "end MASTER",
                "start vrid51 FAULT 2",
                "end FAULT",
                "start vrid51 BACKUP 3",
                "end BACKUP",
            ],
            "sequential and in order, unlike keepalived's forked notify scripts"
        );
        assert_eq!(stats.notify_failures.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
