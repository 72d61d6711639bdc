//! The allocator: giving back to the kernel what the control plane freed.

/// Returns the heap's free memory to the kernel (glibc's `malloc_trim(0)`: every arena,
/// whole free pages inside them too). Bursts of control-plane work (a fleet of runners
/// registering, each batch copying the generated resources of all of them) leave glibc's
/// arenas holding hundreds of megabytes that nothing uses any more; this lets them go. It
/// walks every arena, so call it after such a burst, not per request. Elsewhere than glibc
/// it does nothing.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer and has no precondition; it only releases free
    // memory of the allocator's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
