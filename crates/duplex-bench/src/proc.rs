//! CPU time and memory of a process (the server, or this generator) from
//! `/proc`, and the open-files limit.

use std::io;

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on Linux
/// for every mainstream architecture).
const USER_HZ: f64 = 100.0;

/// Which process (or thread) to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Another process by pid (all its threads).
    Pid(u32),
    /// This process (all threads).
    SelfProcess,
    /// The calling thread only.
    SelfThread,
}

impl Target {
    fn dir(self) -> String {
        match self {
            Target::Pid(pid) => format!("/proc/{pid}"),
            Target::SelfProcess => "/proc/self".to_string(),
            Target::SelfThread => "/proc/thread-self".to_string(),
        }
    }
}

/// User + system CPU seconds consumed so far.
pub(crate) fn cpu_seconds(target: Target) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("{}/stat", target.dir()))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / USER_HZ)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat"))
}

/// Resident set size in KiB (`VmRSS`).
pub(crate) fn rss_kib(target: Target) -> io::Result<u64> {
    status_field(target, "VmRSS:")
}

/// Peak resident set size in KiB (`VmHWM`).
pub(crate) fn peak_rss_kib(target: Target) -> io::Result<u64> {
    status_field(target, "VmHWM:")
}

/// Memory the kernel holds for TCP sockets, machine-wide, in KiB: the
/// `mem` pages of `/proc/net/sockstat` (4 KiB pages). Socket buffers are
/// memory a server costs that its RSS does not show.
pub(crate) fn kernel_tcp_kib() -> io::Result<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat")?;
    parse_sockstat_tcp_pages(&sockstat)
        .map(|pages| pages * 4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no TCP mem in sockstat"))
}

fn parse_sockstat_tcp_pages(sockstat: &str) -> Option<u64> {
    let fields = sockstat.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let mut words = fields.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn status_field(target: Target, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("{}/status", target.dir()))?;
    parse_status_kib(&status, field)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {field} in status")))
}

/// utime + stime (fields 14 and 15) of a `/proc/*/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state): utime is field 14, the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub(crate) fn raise_nofile() -> io::Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tduplex\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn parses_sockstat() {
        let sockstat =
            "sockets: used 290\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 31\nUDP: inuse 0 mem 4\n";
        assert_eq!(parse_sockstat_tcp_pages(sockstat), Some(31));
        assert_eq!(parse_sockstat_tcp_pages("UDP: inuse 0 mem 4\n"), None);
        assert!(kernel_tcp_kib().is_ok());
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds(Target::SelfProcess).unwrap() >= 0.0);
        assert!(cpu_seconds(Target::SelfThread).unwrap() >= 0.0);
        assert!(rss_kib(Target::SelfProcess).unwrap() > 0);
        assert!(peak_rss_kib(Target::SelfProcess).unwrap() > 0);
    }
}
