//! Which CPU each worker thread runs on.
//!
//! A worker that the scheduler is free to move lands wherever a core was idle when it woke,
//! which is usually the core of the container whose frame woke it: the two then take turns on
//! one core while the other idles, and every move leaves the worker's cache behind. Pinned,
//! the worker stays put and the scheduler moves the containers' threads around it instead.
//! On the 2-core perf machine that is 1.3x the TCP throughput of a floating worker, with
//! either worker count (README, performance section). Production datapaths pin for the same
//! reason (OVS's `pmd-cpu-mask`, VPP's `corelist-workers`).

use std::fmt;
use std::io;
use std::str::FromStr;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Where the workers run (`vswitchd --worker-cpus`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WorkerCpus {
    /// The scheduler places and moves the workers (`none`). The default of
    /// [`EngineConfig::new`](super::EngineConfig::new), so that tests, which start many
    /// engines at once, do not all crowd onto one core.
    #[default]
    Floating,
    /// Worker `i` is pinned to the `i`-th highest CPU the daemon may run on, wrapping around
    /// when there are more workers than CPUs (`auto`, the daemon's default). Highest first
    /// because CPU 0 is where interrupts and housekeeping most often land.
    Auto,
    /// Worker `i` is pinned to `cpus[i % cpus.len()]` (`1,3-5`, as `taskset -c` reads it).
    List(Vec<usize>),
}

impl WorkerCpus {
    /// One CPU per worker, or `None` for floating workers. `allowed` is the set of CPUs the
    /// process may run on ([`allowed_cpus`]), in increasing order.
    ///
    /// # Errors
    /// A listed CPU that is not in `allowed` (named in the message), or an empty `allowed`
    /// set for [`Auto`](WorkerCpus::Auto).
    pub fn resolve(&self, workers: usize, allowed: &[usize]) -> Result<Option<Vec<usize>>, String> {
        match self {
            WorkerCpus::Floating => Ok(None),
            WorkerCpus::Auto => {
                if allowed.is_empty() {
                    return Err("no CPU is allowed to this process (sched_getaffinity)".into());
                }
                let highest_first = allowed.iter().rev().copied().cycle();
                Ok(Some(highest_first.take(workers).collect()))
            }
            WorkerCpus::List(cpus) => {
                if let Some(cpu) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
                    return Err(format!(
                        "--worker-cpus: CPU {cpu} is not one this process may run on (allowed: {})",
                        format_cpu_list(allowed)
                    ));
                }
                Ok(Some(cpus.iter().copied().cycle().take(workers).collect()))
            }
        }
    }
}

impl FromStr for WorkerCpus {
    type Err = String;

    /// `auto`, `none`, or a CPU list such as `1`, `0,2` or `2-5,7`.
    fn from_str(text: &str) -> Result<WorkerCpus, String> {
        match text.trim() {
            "auto" => return Ok(WorkerCpus::Auto),
            "none" => return Ok(WorkerCpus::Floating),
            _ => {}
        }
        let mut cpus = Vec::new();
        for item in text.split(',').map(str::trim) {
            let parse = |number: &str| {
                number.parse::<usize>().map_err(|_| {
                    format!(
                        "{item:?} is not a CPU number or range; expected `auto`, `none` or a list \
                         such as `1,3-5`"
                    )
                })
            };
            let (first, last) = match item.split_once('-') {
                Some((first, last)) => (parse(first)?, parse(last)?),
                None => {
                    let cpu = parse(item)?;
                    (cpu, cpu)
                }
            };
            if first > last {
                return Err(format!("{item:?}: a range goes from low to high"));
            }
            if last >= CpuSet::count() {
                return Err(format!(
                    "{item:?}: CPU numbers go up to {}",
                    CpuSet::count() - 1
                ));
            }
            for cpu in first..=last {
                if !cpus.contains(&cpu) {
                    cpus.push(cpu);
                }
            }
        }
        Ok(WorkerCpus::List(cpus))
    }
}

impl fmt::Display for WorkerCpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerCpus::Floating => f.write_str("none"),
            WorkerCpus::Auto => f.write_str("auto"),
            WorkerCpus::List(cpus) => f.write_str(&format_cpu_list(cpus)),
        }
    }
}

/// `0,2,3` as a comma-separated list.
fn format_cpu_list(cpus: &[usize]) -> String {
    let texts: Vec<String> = cpus.iter().map(usize::to_string).collect();
    texts.join(",")
}

/// The CPUs the calling thread may run on (its affinity mask, narrowed by cpusets), in
/// increasing order.
///
/// # Errors
/// When `sched_getaffinity` fails.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// Pins the calling thread to `cpu`.
///
/// # Errors
/// When `cpu` is out of range or `sched_setaffinity` refuses it.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keywords_and_lists() {
        assert_eq!("auto".parse(), Ok(WorkerCpus::Auto));
        assert_eq!("none".parse(), Ok(WorkerCpus::Floating));
        assert_eq!("1".parse(), Ok(WorkerCpus::List(vec![1])));
        assert_eq!(
            "3, 0-1,1".parse(),
            Ok(WorkerCpus::List(vec![3, 0, 1])),
            "order is kept, repeats dropped"
        );
    }

    #[test]
    fn refuses_malformed_lists_with_the_item() {
        for (text, needle) in [
            ("", "\"\""),
            ("1,x", "\"x\""),
            ("3-1", "low to high"),
            ("1-", "\"1-\""),
            ("99999", "go up to"),
        ] {
            let error = text.parse::<WorkerCpus>().unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn display_reads_back() {
        for cpus in [
            WorkerCpus::Auto,
            WorkerCpus::Floating,
            WorkerCpus::List(vec![2, 0]),
        ] {
            assert_eq!(cpus.to_string().parse(), Ok(cpus));
        }
    }

    #[test]
    fn auto_takes_the_highest_cpus_first_and_wraps() {
        let allowed = [0, 1, 4];
        assert_eq!(WorkerCpus::Auto.resolve(2, &allowed), Ok(Some(vec![4, 1])));
        assert_eq!(
            WorkerCpus::Auto.resolve(4, &allowed),
            Ok(Some(vec![4, 1, 0, 4]))
        );
        assert!(WorkerCpus::Auto.resolve(1, &[]).is_err());
        assert_eq!(WorkerCpus::Floating.resolve(3, &allowed), Ok(None));
    }

    #[test]
    fn lists_cycle_over_workers_and_must_be_allowed() {
        let allowed = [0, 1];
        assert_eq!(
            WorkerCpus::List(vec![1]).resolve(3, &allowed),
            Ok(Some(vec![1, 1, 1]))
        );
        let error = WorkerCpus::List(vec![0, 5])
            .resolve(2, &allowed)
            .unwrap_err();
        assert!(
            error.contains("CPU 5") && error.contains("allowed: 0,1"),
            "{error}"
        );
    }

    #[test]
    fn a_thread_can_be_pinned_to_an_allowed_cpu() {
        let allowed = allowed_cpus().expect("sched_getaffinity");
        let cpu = *allowed.last().expect("at least one CPU");
        let pinned = std::thread::spawn(move || {
            pin_current_thread(cpu).expect("sched_setaffinity");
            allowed_cpus().expect("sched_getaffinity")
        })
        .join()
        .expect("thread");
        assert_eq!(pinned, vec![cpu]);
    }
}
