//! `wick_nn::allocator`: after `retain_freed_memory`, a large buffer freed and allocated again
//! reuses memory the process already has (no page fault per page), as glibc's defaults do not.
//! Its own test binary without libtest's harness (`harness = false` in Cargo.toml): the
//! allocator settings are process-wide, and the buffers must be allocated on the main thread,
//! whose arena is the heap the settings govern (as the CLI's and the benches' tensors are; a
//! libtest test runs on a spawned thread with a 64 MiB per-thread arena).

/// Minor page faults of this process so far (`getrusage`'s `ru_minflt`, from /proc).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces): state is
    // field 3, minflt field 10 (proc(5)).
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    after_name.split(' ').nth(7).expect("minflt").parse().expect("minflt is a number")
}

/// Allocates, touches every page of, and frees a buffer of `bytes`; returns the page faults
/// that took.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn faults_of_one_buffer(bytes: usize) -> u64 {
    let before = minor_faults();
    let mut buffer = vec![0u8; bytes];
    for page in buffer.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&buffer);
    drop(buffer);
    minor_faults() - before
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn a_freed_large_buffer_is_reused_without_page_faults() {
    use wick_nn::allocator::{AllocatorTuning, retain_freed_memory};
    // 64 MiB: above glibc's default mmap threshold (at most 32 MiB), below wick's (1 GiB).
    let bytes = 64 << 20;
    let pages = (bytes / 4096) as u64;
    // glibc's defaults: mapped afresh every time, so every page faults again.
    let default_faults = faults_of_one_buffer(bytes);
    assert!(default_faults >= pages / 2, "{default_faults} faults for {pages} pages (defaults)");
    assert_eq!(retain_freed_memory(), AllocatorTuning::Applied);
    assert_eq!(retain_freed_memory(), AllocatorTuning::Applied, "idempotent");
    // The first buffer after the change grows the heap (faults once); the next reuses it.
    faults_of_one_buffer(bytes);
    let reused_faults = faults_of_one_buffer(bytes);
    assert!(reused_faults < pages / 20, "{reused_faults} faults for {pages} pages (retained)");
}

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    a_freed_large_buffer_is_reused_without_page_faults();
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    assert_eq!(
        wick_nn::allocator::retain_freed_memory(),
        wick_nn::allocator::AllocatorTuning::Unsupported
    );
}
