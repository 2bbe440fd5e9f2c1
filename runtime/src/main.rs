//! The `weir` binary: parses the command line and hands over to the library.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    return_freed_memory_soon();
    weir::cli::main()
}

/// mimalloc (v3) keeps freed memory for a second, and ten in its arenas, before giving it back to
/// the OS: each layer pass's peak (a MERGE's working set) would then stack on the previous pass's
/// (1,078 MiB at 20,000 changes/s). Given back at once, every pass faults in and zeroes its memory
/// afresh, a fifth of the process's CPU at 10,000 changes/s. After 50 ms, memory a pass frees is
/// reused within the pass and gone before the next one: faster (README, freshness) while the peak
/// under overload stays under 1 GiB (956-969 MiB at 40,000 changes/s; 913 at once, up to 1,060
/// with 100 ms). `MIMALLOC_PURGE_DELAY` still wins.
#[allow(unsafe_code)]
fn return_freed_memory_soon() {
    // `mi_option_purge_delay` of mimalloc v3's `mi_option_e` (libmimalloc-sys 0.1.49 names no
    // constant for it; the lock file pins that version).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option has no precondition; mimalloc reads it at its next purge.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 50) };
    }
}
