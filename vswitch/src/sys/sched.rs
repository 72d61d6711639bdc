//! The calling thread's scheduling priority, and a thread's context switches.

use std::io;

/// Sets the calling thread's nice value (-20, the most favoured, to 19). On Linux,
/// `setpriority(PRIO_PROCESS, 0, ...)` changes the calling thread only: each thread is a
/// task with a nice value of its own. Lowering it below 0 needs `CAP_SYS_NICE`.
///
/// # Errors
/// The kernel's error (`EACCES` without the capability).
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's nice value.
///
/// # Errors
/// The kernel's error.
pub fn thread_nice() -> io::Result<i32> {
    // getpriority returns -1 both for nice -1 and for an error: errno tells them apart.
    // SAFETY: getpriority takes plain integers and touches no memory of ours; the errno
    // location is the calling thread's own.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    let error = io::Error::last_os_error();
    if nice == -1 && error.raw_os_error().is_some_and(|errno| errno != 0) {
        return Err(error);
    }
    Ok(nice)
}

/// How often a thread gave up its CPU: `voluntary` (it slept: waited for I/O or an event,
/// and each such sleep ended with a wake-up) and `involuntary` (it was preempted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switches {
    /// Voluntary context switches.
    pub voluntary: u64,
    /// Nonvoluntary context switches.
    pub involuntary: u64,
}

/// The kernel's context switch counts of thread `tid` of this process
/// (`/proc/self/task/<tid>/status`); `None` when the thread is gone or the file unreadable.
pub fn thread_switches(tid: i32) -> Option<Switches> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    parse_switches(&status)
}

/// The `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` lines of a status file.
fn parse_switches(status: &str) -> Option<Switches> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    Some(Switches {
        voluntary: field("voluntary_ctxt_switches")?,
        involuntary: field("nonvoluntary_ctxt_switches")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_changes_its_own_nice_value_only() {
        let before = thread_nice().expect("getpriority");
        let target = (before + 1).min(19);
        std::thread::spawn(move || {
            set_thread_nice(target).expect("raising one's nice value needs no privilege");
            assert_eq!(thread_nice().expect("getpriority"), target);
        })
        .join()
        .expect("the thread");
        assert_eq!(thread_nice().expect("getpriority"), before);
    }

    #[test]
    fn switches_from_a_status_file_and_from_a_live_thread() {
        let status = "Name:\tvswitch-w0\nvoluntary_ctxt_switches:\t12\n\
                      nonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(
            parse_switches(status),
            Some(Switches {
                voluntary: 12,
                involuntary: 3
            })
        );
        assert_eq!(parse_switches("voluntary_ctxt_switches:\t1\n"), None);
        let tid = nix::unistd::gettid().as_raw();
        let before = thread_switches(tid).expect("this thread's status");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let after = thread_switches(tid).expect("this thread's status");
        assert!(
            after.voluntary > before.voluntary,
            "a sleep is a voluntary switch"
        );
        assert_eq!(thread_switches(-1), None);
    }
}
