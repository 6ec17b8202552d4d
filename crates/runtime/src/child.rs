//! Child processes that never outlive their parent.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the
//! process. Architecture invariant: callers spawn children from the main thread of a
//! current-thread runtime (the supervisor and the db node both run one), which lives
//! as long as the process.

use std::io;

use nix::sys::signal::Signal;

/// Makes the child of `cmd` receive `signal` when this process dies, even by SIGKILL.
/// If this process is already gone when the child starts, the child does not run.
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut tokio::process::Command, signal: Signal) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec. It only makes the
    // async-signal-safe system calls prctl(2) and getppid(2) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            // The parent may have died between fork and prctl.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(
                    nix::errno::Errno::ESRCH as i32,
                ));
            }
            Ok(())
        });
    }
}

/// Makes the child of `cmd` run in the network namespace `netns` (an open
/// `/run/netns/NAME`): every socket it opens, and every process it starts, lives there.
#[allow(unsafe_code)]
pub fn enter_netns(cmd: &mut tokio::process::Command, netns: std::fs::File) {
    use std::os::fd::AsFd;
    // SAFETY: the closure runs in the child between fork and exec. It only makes the
    // async-signal-safe system call setns(2) on a descriptor opened before the fork
    // (owned by the closure, so it stays open until the exec, which closes it: it was
    // opened with O_CLOEXEC) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))
        });
    }
}
