//! The calling thread's scheduling priority.

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
}
