//! The process heap, kept small (issue 11: the agent under 100 MB idle and 150 MB during a
//! forget, on a camera that runs other things too). glibc's malloc gives each thread that
//! allocates its own arena (up to 8 per core); the agent's threads (tokio, ONNX Runtime's
//! and tract's pools) each kept the free space of their largest runs, and freed pages in
//! the middle of an arena stay resident until trimmed. So the daemon uses one arena
//! ([`one_arena`], at start, before any thread) and hands free pages back after loading the
//! model and after each update ([`give_back_free_pages`]). Measured with
//! `scripts/agent-memory`: see ARCHITECTURE.md. Both are no-ops where the C library is not
//! glibc; nothing here changes what the program computes.

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
