//! The process heap, for the processes that run the graphs (the agent, lethectl, the
//! benchmarks). glibc only; elsewhere every function here is a no-op, and nothing here
//! changes what the program computes.
//!
//! - [`keep_step_buffers`]: a train step allocates and frees about a thousand intermediate
//!   tensors (up to 1 MiB each). With glibc's defaults the large ones came from fresh mmaps
//!   and the freed top of the heap was handed back after every step, so every step
//!   page-faulted its ~20 MiB in again: 23 ms a step instead of 17 (issue 11). Buffers under
//!   4 MiB now come from the heap, and up to 32 MiB of free top is kept between steps. The
//!   pages are free to malloc, so verification reuses them: the agent's peak during a forget
//!   is unchanged (ORT's own CPU arena, tried first, held them for the train step alone and
//!   raised the peak by ~20 MiB).
//! - [`one_arena`] (the agent): glibc gives each thread that allocates its own arena (up to
//!   8 per core); the agent's threads (tokio, ONNX Runtime's and tract's pools) each kept
//!   the free space of their largest runs, and freed pages in the middle of an arena stay
//!   resident until trimmed. So the daemon uses one arena, at start, before any thread.
//! - [`give_back_free_pages`] after loading the model and after each update.
//!
//! Measured with `scripts/agent-memory`: see ARCHITECTURE.md (issue 11: the agent under
//! 100 MB idle and 150 MB during a forget, on a camera that runs other things too).

/// Largest allocation served from the heap rather than by its own mmap.
pub const MMAP_THRESHOLD: usize = 4 << 20;
/// Free memory at the top of the heap kept rather than handed back on `free`.
pub const TRIM_THRESHOLD: usize = 32 << 20;

/// Keeps a train step's buffers in the heap between steps (module docs). Call at start.
pub fn keep_step_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; both are valid on glibc.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// Makes every thread allocate from the main arena (glibc `M_ARENA_MAX` = 1). Call first
/// thing in `main`: arenas made before it stay.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX is valid on glibc.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the heap's free pages to the system (glibc `malloc_trim(0)`).
pub fn give_back_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
