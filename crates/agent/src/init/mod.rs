//! `banger-agent` as PID 1 of an image that has no init of its own (an
//! image pulled from an OCI registry): docs/guest-contract.md, "Images
//! without an init".
//!
//! The kernel command line names it (`init=/.banger/init`, the agent's
//! binary); banger's initramfs `switch_root`s to it. Running as PID 1 it
//! (`--init` anywhere else is refused: this powers the machine off):
//!
//! 1. mounts what is not mounted yet: `/proc`, `/sys`, `/dev` (devtmpfs),
//!    `/dev/pts`, `/dev/shm`, `/run` (the initramfs moved its `/proc`,
//!    `/sys` and `/dev` over when the image has those directories); makes
//!    `/tmp` (mode 1777, on the disk as in a container) and the `/dev/fd`,
//!    `/dev/std*` links; mounts the work disk `/dev/vdb` on `/root`;
//! 2. sets the hostname (`banger.hostname=`), writing `/etc/hostname`
//!    and `/etc/hosts`;
//! 3. configures `lo` and `eth0` (`banger.ip=`, `banger.gw=`) in-process
//!    (see `net.rs` for why) and writes `/etc/resolv.conf` (`banger.dns=`);
//! 4. starts the agent proper as its child (`/proc/self/exe`, no
//!    options: it serves the virtio-serial port exactly as under
//!    systemd) and restarts it when it exits;
//! 5. reaps every child that reaches it. The agent's exec children are
//!    the agent's own, never PID 1's, so the agent's waiters keep their
//!    exit statuses: PID 1 only ever sees the agent itself and orphans
//!    (a process the exec'd command left in the background), which is
//!    why it may simply `wait()` for anything;
//! 6. powers off on the ACPI power button (QMP `system_powerdown`: the
//!    initramfs loads `button` and `evdev`) or on `SIGTERM`/`SIGINT`
//!    (Ctrl-Alt-Del): every process gets `SIGTERM`, 3 s, `SIGKILL`, then
//!    `sync`, `/` remounted read-only, `reboot(POWER_OFF)`.
//!
//! It never returns: the kernel panics when PID 1 exits, so any failure
//! is logged on the console and ends in a power-off.

pub mod cmdline;
pub mod net;
mod setup;
pub mod supervise;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, WaitOptions};

use crate::exec::DEFAULT_PATH;
use crate::log;
use supervise::{Action, Supervisor};

/// The NIC (no udev: the kernel's name).
const NIC: &str = "eth0";

/// Set once a power-off has begun: the agent is not restarted then.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Runs as PID 1; never returns.
pub fn run() -> ! {
    log!(
        "banger-agent {} starting as init (pid {})",
        env!("CARGO_PKG_VERSION"),
        rustix::process::getpid().as_raw_nonzero()
    );
    signals::block();
    let outcome = std::panic::catch_unwind(|| {
        setup::system();
        if let Err(e) = crate::spawn("power-button", power::watch_button) {
            log!("init: cannot watch the power button: {e}");
        }
        if let Err(e) = crate::spawn("signals", signals::watch) {
            log!("init: cannot watch signals: {e}");
        }
        supervise_forever()
    });
    if outcome.is_err() {
        log!("init: panicked");
    }
    power::off("the init failed")
}

/// Starts the agent and reaps children forever.
fn supervise_forever() -> ! {
    let mut sup = Supervisor::default();
    let mut agent = start_agent(&mut sup);
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((pid, status))) => {
                match sup.on_exit(pid.as_raw_nonzero().get(), Instant::now()) {
                    Action::Orphan => {}
                    Action::Restart { after } => {
                        log!(
                            "init: the agent (pid {pid:?}) ended ({status:?}); restarting it in {} ms",
                            after.as_millis()
                        );
                        agent = None;
                        if STOPPING.load(Ordering::Acquire) {
                            continue;
                        }
                        std::thread::sleep(after);
                        if !STOPPING.load(Ordering::Acquire) {
                            agent = start_agent(&mut sup);
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::CHILD) => {
                // No child at all: the agent could not be started. Try
                // again, slowly (nothing else would serve the host).
                std::thread::sleep(supervise::MAX_BACKOFF);
                if agent.is_none() && !STOPPING.load(Ordering::Acquire) {
                    agent = start_agent(&mut sup);
                }
            }
            Err(e) => {
                log!("init: wait: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Spawns the agent proper: this binary, without options.
fn start_agent(sup: &mut Supervisor) -> Option<Pid> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("banger-agent")
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/root")
        .current_dir("/")
        .stdin(Stdio::null());
    // SAFETY: runs in the child between fork and exec and makes only
    // async-signal-safe calls (sigemptyset, pthread_sigmask) on a local.
    // The mask PID 1 blocks (`signals::block`) is inherited across fork
    // and exec, and std does not reset it: without this the agent, and
    // every command it runs, would ignore SIGTERM and SIGINT.
    unsafe {
        cmd.pre_exec(|| {
            signals::unblock_all();
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    match spawned {
        Ok(child) => {
            let raw = child.id();
            // Dropping a Child neither kills nor waits: PID 1's loop reaps it.
            drop(child);
            let pid = i32::try_from(raw).ok().and_then(Pid::from_raw);
            if let Some(p) = pid {
                sup.started(p.as_raw_nonzero().get(), Instant::now());
            }
            log!("init: agent started (pid {raw})");
            pid
        }
        Err(e) => {
            log!("init: cannot start the agent: {e}");
            None
        }
    }
}

mod signals {
    //! `SIGTERM` and `SIGINT` (Ctrl-Alt-Del, once `reboot(CAD_OFF)`
    //! makes the kernel send it) power off. PID 1 gets no signal it has
    //! no handler for, so they are blocked and waited for here.

    use crate::log;

    /// The signals that power off.
    fn set() -> libc::sigset_t {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset
        // before use; the pointers are to this local.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            set
        }
    }

    /// Blocks them in the calling thread, and so in every thread it
    /// starts afterwards. Called first thing in PID 1's main thread: the
    /// kernel drops a signal sent to PID 1 that has no handler unless it
    /// is blocked (then it stays pending for [`watch`]'s `sigwait`).
    /// The agent is started with an empty mask (`unblock_all`).
    pub(super) fn block() {
        let set = set();
        // SAFETY: valid pointers to a local initialised set; changes the
        // calling thread's mask only.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            log!("init: cannot block SIGTERM and SIGINT (error {r})");
        }
    }

    /// Unblocks every signal in the calling thread (async-signal-safe:
    /// used between fork and exec).
    pub(super) fn unblock_all() {
        // SAFETY: sigset_t is plain data initialised by sigemptyset; both
        // calls are async-signal-safe and touch only this local and the
        // calling thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        }
    }

    /// Waits for them and powers off.
    pub(super) fn watch() {
        let set = set();
        if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::CadOff) {
            log!("init: cannot turn Ctrl-Alt-Del into SIGINT: {e}");
        }
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised signal set and `sig` a valid
            // place for the result, both alive for the call.
            let r = unsafe { libc::sigwait(&set, &mut sig) };
            if r == 0 {
                super::power::off(if sig == libc::SIGINT {
                    "Ctrl-Alt-Del"
                } else {
                    "SIGTERM"
                });
            }
        }
    }
}

pub mod power {
    //! The ACPI power button (an evdev device named "Power Button") and
    //! the power-off itself.

    use std::fs::{self, File};
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use crate::log;

    const SYSFS_INPUT: &str = "/sys/class/input";
    /// `EV_KEY` and `KEY_POWER` of <linux/input-event-codes.h>.
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    /// `struct input_event` on 64-bit Linux: timeval (16), type, code, value.
    const EVENT_SIZE: usize = 24;
    /// How long to look for the button (its module is loaded by the
    /// initramfs, so it is there at once or never).
    const FIND_FOR: Duration = Duration::from_secs(5);
    /// How long processes get between `SIGTERM` and `SIGKILL`.
    const GRACE: Duration = Duration::from_secs(3);

    /// The `eventN` entries of `sysfs_input` whose device is named
    /// "Power Button", with their `dev` numbers.
    pub fn find_buttons(sysfs_input: &Path) -> Vec<(String, Option<(u32, u32)>)> {
        let Ok(entries) = fs::read_dir(sysfs_input) else {
            return Vec::new();
        };
        let mut found: Vec<(String, Option<(u32, u32)>)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if !name.starts_with("event") {
                    return None;
                }
                let dev_name = fs::read_to_string(e.path().join("device/name")).ok()?;
                if dev_name.trim_end() != "Power Button" {
                    return None;
                }
                let dev = fs::read_to_string(e.path().join("dev")).ok().and_then(|d| {
                    let (a, b) = d.trim().split_once(':')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                });
                Some((name, dev))
            })
            .collect();
        found.sort();
        found
    }

    /// Whether `ev` (one `struct input_event`) is the power key pressed.
    pub fn is_power_press(ev: &[u8]) -> bool {
        ev.len() == EVENT_SIZE
            && u16::from_ne_bytes([ev[16], ev[17]]) == EV_KEY
            && u16::from_ne_bytes([ev[18], ev[19]]) == KEY_POWER
            && i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]) == 1
    }

    fn open_button() -> Option<(PathBuf, File)> {
        let started = Instant::now();
        loop {
            for (entry, dev) in find_buttons(Path::new(SYSFS_INPUT)) {
                let path = Path::new("/dev/input").join(&entry);
                if !path.exists() {
                    if let Some((major, minor)) = dev {
                        let _ = fs::create_dir_all("/dev/input");
                        let _ = rustix::fs::mknodat(
                            rustix::fs::CWD,
                            &path,
                            rustix::fs::FileType::CharacterDevice,
                            rustix::fs::Mode::from_raw_mode(0o600),
                            rustix::fs::makedev(major, minor),
                        );
                    }
                }
                match File::open(&path) {
                    Ok(f) => return Some((path, f)),
                    Err(e) => log!("init: open {}: {e}", path.display()),
                }
            }
            if started.elapsed() >= FIND_FOR {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the power button and powers off when it is pressed.
    pub(super) fn watch_button() {
        let Some((path, mut f)) = open_button() else {
            log!(
                "init: no ACPI power button (is button.ko loaded?); powerdown requests will be ignored"
            );
            return;
        };
        log!("init: power button at {}", path.display());
        let mut buf = [0u8; EVENT_SIZE * 16];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if buf[..n].chunks_exact(EVENT_SIZE).any(is_power_press) {
                        off("the power button");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log!("init: read {}: {e}", path.display());
                    return;
                }
            }
        }
    }

    /// The processes other than PID 1 and kernel threads (pid, name).
    fn others() -> Vec<(u32, String)> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
                // Kernel threads have an empty command line (zombies too:
                // they are the reaping loop's).
                let user =
                    pid != 1 && fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty());
                let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                user.then(|| (pid, comm.trim_end().to_owned()))
            })
            .collect()
    }

    /// Stops every process, syncs and powers off. Never returns.
    pub fn off(reason: &str) -> ! {
        super::STOPPING.store(true, Ordering::Release);
        log!("init: powering off ({reason})");
        // SAFETY: kill(-1, sig) sends to every process but this one; no
        // memory is involved.
        unsafe { libc::kill(-1, libc::SIGTERM) };
        // The reaping loop (another thread) collects them meanwhile.
        let deadline = Instant::now() + GRACE;
        loop {
            let left = others();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                log!(
                    "init: still running after {} s, killed: {left:?}",
                    GRACE.as_secs()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        rustix::fs::sync();
        if let Err(e) = rustix::mount::mount_remount("/", rustix::mount::MountFlags::RDONLY, "") {
            log!("init: remount / read-only: {e}");
        }
        rustix::fs::sync();
        loop {
            if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
                log!("init: power off: {e}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
            let mut e = vec![0u8; 16];
            e.extend(kind.to_ne_bytes());
            e.extend(code.to_ne_bytes());
            e.extend(value.to_ne_bytes());
            e
        }

        #[test]
        fn power_key_presses() {
            assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
            assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)));
            assert!(!is_power_press(&event(0, 0, 0)));
            assert!(!is_power_press(&event(EV_KEY, 30, 1)));
            assert!(!is_power_press(&[0u8; 8]));
        }

        #[test]
        fn buttons_are_found_by_name() {
            let dir =
                std::env::temp_dir().join(format!("banger-agent-input-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            for (entry, name, dev) in [
                ("event0", "AT Keyboard\n", "13:64\n"),
                ("event1", "Power Button\n", "13:65\n"),
                ("input1", "Power Button\n", ""),
            ] {
                fs::create_dir_all(dir.join(entry).join("device")).unwrap();
                fs::write(dir.join(entry).join("device/name"), name).unwrap();
                fs::write(dir.join(entry).join("dev"), dev).unwrap();
            }
            assert_eq!(
                find_buttons(&dir),
                vec![("event1".to_owned(), Some((13, 65)))]
            );
            assert!(find_buttons(&dir.join("none")).is_empty());
            fs::remove_dir_all(&dir).unwrap();
        }
    }
}
