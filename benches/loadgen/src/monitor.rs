//! Watching the broker's processes during a run: CPU time before and after,
//! and the peak RSS. A broker may be several processes (the nodes of a
//! cluster and the NATS server under them): each is watched on its own,
//! so a run can say what each one cost, and the sums stand for the broker.

use crate::procstat::{self, ProcSample};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One process watched: its counters at the start, and a sampler thread
/// for the peak RSS where `VmHWM` cannot be reset (a process we do not
/// own).
struct Monitor {
    pid: u32,
    before: ProcSample,
    hwm_reset: bool,
    sampled_max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<()>,
}

impl Monitor {
    fn start(pid: u32) -> io::Result<Monitor> {
        let hwm_reset = procstat::reset_peak(pid).is_ok();
        let before = procstat::sample(pid)?;
        let sampled_max = Arc::new(AtomicU64::new(before.rss_kb));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (max, stop) = (sampled_max.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(s) = procstat::sample(pid) {
                        max.fetch_max(s.rss_kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Ok(Monitor {
            pid,
            before,
            hwm_reset,
            sampled_max,
            stop,
            sampler,
        })
    }

    fn finish(self) -> io::Result<ProcUsage> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.sampler.join();
        let after = procstat::sample(self.pid)?;
        let mut peak = self.sampled_max.load(Ordering::Relaxed).max(after.rss_kb);
        if self.hwm_reset {
            peak = peak.max(after.hwm_kb);
        }
        Ok(ProcUsage {
            pid: self.pid,
            cpu_s: self.before.cpu_secs_until(&after),
            peak_rss_kb: peak,
            rss_before_kb: self.before.rss_kb,
            rss_after_kb: after.rss_kb,
        })
    }
}

/// What one process used during the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcUsage {
    /// The process.
    pub pid: u32,
    /// User plus system CPU seconds.
    pub cpu_s: f64,
    /// Peak RSS, KiB.
    pub peak_rss_kb: u64,
    /// RSS at the start, KiB.
    pub rss_before_kb: u64,
    /// RSS at the end, KiB.
    pub rss_after_kb: u64,
}

/// What the watched processes used during the run, each and in all.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// Each process, in the order they were given.
    pub each: Vec<ProcUsage>,
}

impl Usage {
    /// CPU seconds of all the processes.
    pub fn cpu_s(&self) -> f64 {
        self.each.iter().map(|p| p.cpu_s).sum()
    }

    /// The sum of the processes' peaks, KiB: an upper bound on their peak
    /// together (they need not peak at the same moment).
    pub fn peak_rss_kb(&self) -> u64 {
        self.each.iter().map(|p| p.peak_rss_kb).sum()
    }

    /// RSS of all the processes at the start, KiB.
    pub fn rss_before_kb(&self) -> u64 {
        self.each.iter().map(|p| p.rss_before_kb).sum()
    }

    /// RSS of all the processes at the end, KiB.
    pub fn rss_after_kb(&self) -> u64 {
        self.each.iter().map(|p| p.rss_after_kb).sum()
    }
}

/// Several processes watched over one run.
pub struct Watch {
    monitors: Vec<Monitor>,
}

impl Watch {
    /// Starts watching `pids`. Fails if any of them cannot be read: sums
    /// that left one out would pass for the whole broker.
    pub fn start(pids: &[u32]) -> io::Result<Watch> {
        let mut monitors = Vec::with_capacity(pids.len());
        for &pid in pids {
            match Monitor::start(pid) {
                Ok(m) => monitors.push(m),
                Err(e) => {
                    for m in monitors {
                        let _ = m.finish();
                    }
                    return Err(io::Error::new(e.kind(), format!("/proc/{pid}: {e}")));
                }
            }
        }
        Ok(Watch { monitors })
    }

    /// Stops watching and reads what each process used; `None` when
    /// nothing was watched.
    pub fn finish(self) -> io::Result<Option<Usage>> {
        if self.monitors.is_empty() {
            return Ok(None);
        }
        let mut each = Vec::with_capacity(self.monitors.len());
        let mut failed = None;
        for m in self.monitors {
            let pid = m.pid;
            match m.finish() {
                Ok(u) => each.push(u),
                Err(e) => failed = Some(io::Error::new(e.kind(), format!("/proc/{pid}: {e}"))),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(Some(Usage { each })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_each_process_and_sums_them() {
        let me = std::process::id();
        let watch = Watch::start(&[me, me]).unwrap();
        // Some CPU of our own to be seen: the counters tick at 100 Hz.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let usage = watch.finish().unwrap().unwrap();
        assert_eq!(usage.each.len(), 2);
        assert!(usage.each.iter().all(|p| p.pid == me && p.cpu_s > 0.0));
        assert!((usage.cpu_s() - usage.each[0].cpu_s - usage.each[1].cpu_s).abs() < 1e-9);
        assert_eq!(
            usage.peak_rss_kb(),
            usage.each[0].peak_rss_kb + usage.each[1].peak_rss_kb
        );
    }

    #[test]
    fn a_process_that_is_not_there_fails_the_start() {
        // Beyond the default pid_max (4194304 at most on 64-bit Linux).
        assert!(Watch::start(&[std::process::id(), 4_194_400]).is_err());
    }

    #[test]
    fn nothing_watched_is_no_usage() {
        assert_eq!(Watch::start(&[]).unwrap().finish().unwrap(), None);
    }
}
