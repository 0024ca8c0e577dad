//! A [`Host`] that changes nothing: it records every call, serves files
//! from memory and acts like the kernel where the agent's decisions
//! depend on it (freezing a frozen filesystem is `EBUSY`, thawing one
//! that is not frozen `EINVAL`; `ssh-keygen` makes a key pair). For tests:
//! `cargo test -p banger-agent` runs as root in CI and must never change
//! the clock, hostname, network, filesystems or sshd of the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::host::Host;

/// One change asked of the host, in the order asked (reads are not
/// recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SetClock(u64),
    Sync,
    Fsync(PathBuf),
    Freeze(PathBuf),
    Thaw(PathBuf),
    AddRandomness(Vec<u8>),
    SetHostname(String),
    Run(Vec<String>),
    /// `dev`, MAC, `ADDRESS/PREFIX`, gateway.
    SetNic(String, String, String, Option<std::net::Ipv4Addr>),
    Hangup(u32),
    Write {
        path: PathBuf,
        data: Vec<u8>,
        mode: u32,
    },
    Create {
        path: PathBuf,
        data: Vec<u8>,
        mode: u32,
    },
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

impl Call {
    /// What [`FakeHost::fail`] matches: `set_clock`, `sync`,
    /// `fsync:/path`, `freeze:/root`, `thaw:/`, `add_randomness`,
    /// `set_hostname`, `run:ssh-keygen`, `set_nic:eth0`, `hangup`, `write:/etc/hostname`,
    /// `create:/path`, `rename:/from`, `remove:/path`.
    fn key(&self) -> String {
        match self {
            Self::SetClock(_) => "set_clock".into(),
            Self::Sync => "sync".into(),
            Self::Fsync(p) => format!("fsync:{}", p.display()),
            Self::Freeze(p) => format!("freeze:{}", p.display()),
            Self::Thaw(p) => format!("thaw:{}", p.display()),
            Self::AddRandomness(_) => "add_randomness".into(),
            Self::SetHostname(_) => "set_hostname".into(),
            Self::Run(argv) => format!("run:{}", argv.first().map_or("", String::as_str)),
            Self::SetNic(dev, ..) => format!("set_nic:{dev}"),
            Self::Hangup(_) => "hangup".into(),
            Self::Write { path, .. } => format!("write:{}", path.display()),
            Self::Create { path, .. } => format!("create:{}", path.display()),
            Self::Rename(from, _) => format!("rename:{}", from.display()),
            Self::Remove(p) => format!("remove:{}", p.display()),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    files: BTreeMap<PathBuf, Vec<u8>>,
    frozen: BTreeSet<PathBuf>,
    failures: BTreeMap<String, String>,
    keys_made: u32,
}

/// The recording fake; see the module's documentation.
#[derive(Debug, Default)]
pub struct FakeHost {
    state: Mutex<State>,
    changed: Condvar,
}

/// A guest's `/proc/self/mountinfo`: the root disk on `/`, the work disk
/// on `/root`, and pseudo filesystems.
pub const GUEST_MOUNTINFO: &str = "\
21 1 254:0 / / rw,relatime - ext4 /dev/vda rw
22 21 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=4096k
23 21 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
24 21 0:22 / /sys rw,nosuid,nodev,noexec - sysfs sysfs rw
25 21 0:23 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=100k
40 21 254:16 / /root rw,relatime shared:9 - ext4 /dev/vdb rw
";

impl FakeHost {
    /// A guest with [`GUEST_MOUNTINFO`], an `/etc/hosts` with a
    /// `127.0.1.1` line, an ed25519 host key, and sshd running as pid 321.
    pub fn guest() -> Self {
        let h = Self::default();
        h.put("/proc/self/mountinfo", GUEST_MOUNTINFO);
        h.put(
            "/etc/hosts",
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\tbase\n",
        );
        h.put("/etc/hostname", "base\n");
        h.put("/etc/ssh/ssh_host_ed25519_key", "PRIVATE old\n");
        h.put(
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "ssh-ed25519 AAAAold \n",
        );
        h.put("/etc/ssh/sshd_config", "# config\n");
        h.put("/run/sshd.pid", "321\n");
        h.put("/proc/321/comm", "sshd\n");
        // An sshd that loads its host keys once (OpenSSH 9.8 and later).
        h.put("/usr/lib/openssh/sshd-session", "ELF\n");
        h
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Test bookkeeping: consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets a file's contents (not recorded as a call).
    pub fn put(&self, path: &str, contents: &str) {
        self.state()
            .files
            .insert(PathBuf::from(path), contents.as_bytes().to_vec());
    }

    /// Removes a file (not recorded as a call).
    pub fn unput(&self, path: &str) {
        self.state().files.remove(Path::new(path));
    }

    /// A file's contents, if it exists.
    pub fn file(&self, path: &str) -> Option<String> {
        self.state()
            .files
            .get(Path::new(path))
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Makes the calls whose key is `key` (see [`Call`]'s keys, e.g.
    /// `run:ip`, `freeze:/`) fail with `message`.
    pub fn fail(&self, key: &str, message: &str) {
        self.state()
            .failures
            .insert(key.to_owned(), message.to_owned());
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The mount points frozen now.
    pub fn frozen(&self) -> Vec<PathBuf> {
        self.state().frozen.iter().cloned().collect()
    }

    /// Waits (up to `timeout`) until `done` holds for the calls; whether
    /// it did.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Call]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        loop {
            if done(&st.calls) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Records `call`, then fails it if asked to, else applies `effect`.
    fn record<T>(
        &self,
        call: Call,
        effect: impl FnOnce(&mut State) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut st = self.state();
        let key = call.key();
        st.calls.push(call);
        let result = match st.failures.get(&key) {
            Some(message) => Err(io::Error::other(message.clone())),
            None => effect(&mut st),
        };
        drop(st);
        self.changed.notify_all();
        result
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl Host for FakeHost {
    fn set_clock(&self, unix_ns: u64) -> io::Result<()> {
        self.record(Call::SetClock(unix_ns), |_| Ok(()))
    }

    fn sync(&self) {
        let _ = self.record(Call::Sync, |_| Ok(()));
    }

    fn fsync(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Fsync(path.to_owned()), |st| {
            // A file, or a directory holding some.
            if st.files.keys().any(|p| p.starts_with(path)) {
                Ok(())
            } else {
                Err(not_found(path))
            }
        })
    }

    fn freeze(&self, mount: &Path) -> io::Result<()> {
        self.record(Call::Freeze(mount.to_owned()), |st| {
            if st.frozen.insert(mount.to_owned()) {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::BUSY.raw_os_error(),
                ))
            }
        })
    }

    fn thaw(&self, mount: &Path) -> io::Result<()> {
        self.record(Call::Thaw(mount.to_owned()), |st| {
            if st.frozen.remove(mount) {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::INVAL.raw_os_error(),
                ))
            }
        })
    }

    fn add_randomness(&self, bytes: &[u8]) -> io::Result<()> {
        self.record(Call::AddRandomness(bytes.to_vec()), |_| Ok(()))
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record(Call::SetHostname(name.to_owned()), |_| Ok(()))
    }

    fn run(&self, argv: &[&str]) -> io::Result<()> {
        let call = Call::Run(argv.iter().map(|a| (*a).to_owned()).collect());
        self.record(call, |st| {
            if argv.first() == Some(&"ssh-keygen") {
                // `-f PATH`: the private key there, the public one beside.
                let path = argv
                    .windows(2)
                    .find(|w| w[0] == "-f")
                    .map(|w| PathBuf::from(w[1]))
                    .ok_or_else(|| io::Error::other("ssh-keygen without -f"))?;
                st.keys_made += 1;
                let n = st.keys_made;
                st.files
                    .insert(path.clone(), format!("PRIVATE {n}\n").into_bytes());
                let mut public = path.into_os_string();
                public.push(".pub");
                st.files.insert(
                    PathBuf::from(public),
                    format!("ssh-ed25519 AAAAnew{n} \n").into_bytes(),
                );
            }
            Ok(())
        })
    }

    fn set_nic(
        &self,
        dev: &str,
        mac: [u8; 6],
        net: &crate::init::cmdline::NetParams,
    ) -> io::Result<()> {
        let mac = mac
            .iter()
            .map(|o| format!("{o:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let cidr = format!("{}/{}", net.address, net.prefix);
        self.record(Call::SetNic(dev.into(), mac, cidr, net.gateway), |_| Ok(()))
    }

    fn hangup(&self, pid: u32) -> io::Result<()> {
        self.record(Call::Hangup(pid), |_| Ok(()))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.state()
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))
    }

    fn write(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
        let call = Call::Write {
            path: path.to_owned(),
            data: data.to_vec(),
            mode,
        };
        self.record(call, |st| {
            st.files.insert(path.to_owned(), data.to_vec());
            Ok(())
        })
    }

    fn create(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
        let call = Call::Create {
            path: path.to_owned(),
            data: data.to_vec(),
            mode,
        };
        self.record(call, |st| {
            if st.files.contains_key(path) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: file exists", path.display()),
                ));
            }
            st.files.insert(path.to_owned(), data.to_vec());
            Ok(())
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.record(Call::Rename(from.to_owned(), to.to_owned()), |st| {
            let data = st.files.remove(from).ok_or_else(|| not_found(from))?;
            st.files.insert(to.to_owned(), data);
            Ok(())
        })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Remove(path.to_owned()), |st| {
            st.files
                .remove(path)
                .map(|_| ())
                .ok_or_else(|| not_found(path))
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state();
        let names: Vec<String> = st
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect();
        if names.is_empty() && !st.files.keys().any(|p| p.starts_with(dir)) {
            return Err(not_found(dir));
        }
        Ok(names)
    }
}
