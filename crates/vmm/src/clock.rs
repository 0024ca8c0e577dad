//! Kernel arguments that keep a guest's clock sane under TCG.
//!
//! Under TCG the guest's TSC is the host's (QEMU reads the host counter),
//! but `-M microvm,acpi=on` gives the guest no PIT timer, HPET or ACPI PM
//! timer, so its only way to learn the TSC rate is a PIT measurement that
//! fails whenever the QEMU thread is descheduled for a few milliseconds.
//! The kernel then marks the TSC unstable, is left with no timer tick until
//! the local APIC timer runs, and spins forever calibrating that timer
//! against `jiffies` (`setup_boot_APIC_clock`). On these machines that was
//! 3 boots in 20 idle and 12 in 20 with two VMs booting under load
//! (docs/benchmarks.md). Telling the kernel the rate (`tsc_early_khz=`)
//! removes the measurement; `tsc=reliable` stops the clock watchdog from
//! demoting the TSC when timer ticks arrive late, as they do under TCG.
//!
//! The rate is measured as host TSC ticks against the monotonic clock over
//! 200 ms, kept only if the host's TSC is constant and non-stop
//! (`/proc/cpuinfo` flags), i.e. a fixed-rate clock the guest can rely on.
//! [`host_tsc_khz`] measures once per process; the daemon also keeps the
//! value per host boot in its cache, so a restart does not measure again.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the TSC is counted against the monotonic clock.
const MEASURE_FOR: Duration = Duration::from_millis(200);

/// The host's TSC rate in kHz, or `None` where it is not a fixed-rate
/// clock (or this is not x86_64). Measured on first use (200 ms).
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(measure_host_tsc_khz)
}

/// Measures the host's TSC rate now (200 ms); see [`host_tsc_khz`].
pub fn measure_host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    if !tsc_is_fixed_rate(&cpuinfo) {
        return None;
    }
    let khz = measure_khz()?;
    tracing::info!(khz, "host tsc rate measured");
    Some(khz)
}

/// The kernel arguments for a guest under TCG on this host.
pub fn tcg_clock_args() -> String {
    clock_args(host_tsc_khz())
}

/// The kernel arguments for a guest under TCG given the host's TSC rate
/// (empty when unknown: the guest then measures it, as it would anyway).
pub fn clock_args(tsc_khz: Option<u64>) -> String {
    match tsc_khz {
        Some(khz) => format!("tsc_early_khz={khz} tsc=reliable"),
        None => String::new(),
    }
}

/// `constant_tsc` (fixed rate across frequency changes) and `nonstop_tsc`
/// (keeps counting in deep idle) on the first CPU.
fn tsc_is_fixed_rate(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| {
            let flags: Vec<&str> = l.split_whitespace().collect();
            flags.contains(&"constant_tsc") && flags.contains(&"nonstop_tsc")
        })
}

#[cfg(target_arch = "x86_64")]
fn measure_khz() -> Option<u64> {
    fn rdtsc() -> u64 {
        // SAFETY: RDTSC exists on every x86_64 CPU and only reads the
        // time-stamp counter; it has no memory effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(MEASURE_FOR);
    let (c1, elapsed) = (rdtsc(), t0.elapsed());
    let ticks = c1.checked_sub(c0)?;
    let micros = u64::try_from(elapsed.as_micros()).ok().filter(|&m| m > 0)?;
    // ticks per microsecond = MHz; times 1000 = kHz.
    Some(ticks.saturating_mul(1000) / micros).filter(|&khz| khz > 0)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_khz() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_needs_both_flags() {
        assert!(tsc_is_fixed_rate(
            "processor: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n"
        ));
        assert!(!tsc_is_fixed_rate("flags\t\t: fpu tsc constant_tsc\n"));
        assert!(!tsc_is_fixed_rate(
            "flags\t\t: fpu tsc nonstop_tsc_x constant_tsc\n"
        ));
        assert!(!tsc_is_fixed_rate(""));
    }

    #[test]
    fn the_measured_rate_is_plausible_and_stable() {
        let Some(khz) = host_tsc_khz() else {
            eprintln!("skipped: this host's tsc is not a fixed-rate clock");
            return;
        };
        // Any x86_64 of the last decades: 0.5 to 6 GHz.
        assert!((500_000..6_000_000).contains(&khz), "{khz} kHz");
        assert_eq!(host_tsc_khz(), Some(khz), "measured once");
        assert_eq!(
            tcg_clock_args(),
            format!("tsc_early_khz={khz} tsc=reliable")
        );
        // A second, independent measurement agrees within 0.5 %.
        let again = measure_khz().unwrap();
        let diff = again.abs_diff(khz) as f64 / khz as f64;
        assert!(diff < 0.005, "{khz} vs {again} kHz");
    }
}
