//! What `/proc` says about a process: its resident memory, for
//! inspection of a pool's workers.

/// Resident memory of process `pid` in bytes, from `/proc/<pid>/statm`;
/// `None` when there is no such process (it just left) or `/proc` is not
/// mounted.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_of_this_process_is_read_and_of_no_process_is_none() {
        let me = rss_bytes(std::process::id()).expect("our own statm");
        assert!(me > 1 << 20, "{me}");
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
