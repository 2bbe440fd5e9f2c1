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
/// afresh: page faults and zeroing were a fifth of the process's CPU at 10,000 changes/s. After
/// 50 ms, memory a pass frees is reused within it and gone before the next pass: in the freshness
/// benchmark, p99 at 10,000 changes/s went from 2.0-2.5 s to 1.8 s and the p50 at 20,000 from 4.1
/// to 2.6 s, while the peak under overload (40,000/s) stayed under 1 GiB (956 MiB; 913 at once;
/// 955-1,060 with 100 ms). `MIMALLOC_PURGE_DELAY` still wins.
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
