//! The NIC set up in-process, with the classic `SIOC*` ioctls on an
//! `AF_INET` datagram socket: loopback up, `eth0`'s address, netmask,
//! `IFF_UP` and the default route.
//!
//! Why in-process rather than with `ip`: a pulled image often has no
//! `ip` (busybox has one, distroless and scratch images have nothing),
//! and doing it in the initramfs (whose busybox has `ip`) would need the
//! initramfs to tell this boot from a Debian one, whose
//! `banger-guest-setup` configures the same NIC itself. The ioctls are
//! five calls on fixed-size structures, stable since Linux 2.0 (netlink
//! would be a message builder and parser for the same effect). What they
//! cannot say is `onlink`: a gateway outside the prefix (bridged mode's
//! `/32` addresses) first gets a host route through `eth0`, which is what
//! `onlink` amounts to.

use std::ffi::c_void;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use super::cmdline::NetParams;

// <linux/sockios.h>
const SIOCADDRT: libc::c_ulong = 0x890B;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891C;
const SIOCSIFHWADDR: libc::c_ulong = 0x8924;
// <linux/if_arp.h>
const ARPHRD_ETHER: u16 = 1;
// <net/if.h>, <net/route.h>
const IFF_UP: i16 = 0x1;
const RTF_UP: u16 = 0x1;
const RTF_GATEWAY: u16 = 0x2;
const RTF_HOST: u16 = 0x4;
const IFNAMSIZ: usize = 16;

/// `struct sockaddr_in` (16 bytes, as `struct sockaddr`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

impl SockaddrIn {
    fn new(a: Ipv4Addr) -> Self {
        Self {
            family: libc::AF_INET as u16,
            port: 0,
            addr: a.octets(),
            zero: [0; 8],
        }
    }
}

/// `struct ifreq` (40 bytes on 64-bit Linux): the name, then a union of
/// which an address or the flags are used here.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Ifreq {
    name: [u8; IFNAMSIZ],
    /// `ifr_addr` / `ifr_netmask` (16 bytes) or `ifr_flags` (the first 2).
    data: [u8; 24],
}

impl Ifreq {
    fn new(dev: &str) -> io::Result<Self> {
        let mut name = [0u8; IFNAMSIZ];
        if dev.is_empty() || dev.len() >= IFNAMSIZ || dev.contains('\0') {
            return Err(io::Error::other(format!("bad interface name {dev:?}")));
        }
        name[..dev.len()].copy_from_slice(dev.as_bytes());
        Ok(Self {
            name,
            data: [0; 24],
        })
    }

    fn with_addr(dev: &str, a: Ipv4Addr) -> io::Result<Self> {
        let mut r = Self::new(dev)?;
        let sa = SockaddrIn::new(a);
        r.data[0..2].copy_from_slice(&sa.family.to_ne_bytes());
        r.data[2..4].copy_from_slice(&sa.port.to_ne_bytes());
        r.data[4..8].copy_from_slice(&sa.addr);
        Ok(r)
    }

    fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_flags(&mut self, f: i16) {
        self.data[0..2].copy_from_slice(&f.to_ne_bytes());
    }
}

/// `struct rtentry` of <net/route.h> (x86_64, aarch64: 120 bytes).
#[repr(C)]
#[derive(Debug)]
struct Rtentry {
    rt_pad1: libc::c_ulong,
    rt_dst: SockaddrIn,
    rt_gateway: SockaddrIn,
    rt_genmask: SockaddrIn,
    rt_flags: u16,
    rt_pad2: i16,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut c_void,
    rt_metric: i16,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: u16,
}

/// One ioctl on `sock` with a pointer to `arg`.
///
/// # Safety
/// `T` must be the structure the kernel reads (and writes) for `req`.
unsafe fn ioctl<T>(sock: &OwnedFd, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: the caller guarantees `arg` is the structure `req` takes;
    // it is valid and exclusively borrowed for the whole call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), req, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?)
}

/// Sets `IFF_UP` on `dev`.
fn up(sock: &OwnedFd, dev: &str) -> io::Result<()> {
    let mut r = Ifreq::new(dev)?;
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS take a `struct ifreq`.
    unsafe { ioctl(sock, SIOCGIFFLAGS, &mut r) }?;
    let f = r.flags() | IFF_UP;
    r.set_flags(f);
    // SAFETY: as above.
    unsafe { ioctl(sock, SIOCSIFFLAGS, &mut r) }
}

/// Clears `IFF_UP` on `dev` (its IPv4 routes go with it).
fn down(sock: &OwnedFd, dev: &str) -> io::Result<()> {
    let mut r = Ifreq::new(dev)?;
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS take a `struct ifreq`.
    unsafe { ioctl(sock, SIOCGIFFLAGS, &mut r) }?;
    let f = r.flags() & !IFF_UP;
    r.set_flags(f);
    // SAFETY: as above.
    unsafe { ioctl(sock, SIOCSIFFLAGS, &mut r) }
}

/// Sets `dev`'s Ethernet address (the device must be down).
fn set_mac(sock: &OwnedFd, dev: &str, mac: [u8; 6]) -> io::Result<()> {
    let mut r = Ifreq::new(dev)?;
    // `ifr_hwaddr`: a `struct sockaddr` whose family is the hardware type
    // and whose data starts with the address.
    r.data[0..2].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
    r.data[2..8].copy_from_slice(&mac);
    // SAFETY: SIOCSIFHWADDR takes a `struct ifreq` holding `ifr_hwaddr`.
    unsafe { ioctl(sock, SIOCSIFHWADDR, &mut r) }
}

/// Adds a route to `dst`/`mask` (through `gateway` if given) on `dev`;
/// one that exists already is fine.
fn add_route(
    sock: &OwnedFd,
    dev: &str,
    dst: Ipv4Addr,
    mask: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
) -> io::Result<()> {
    let mut name = Ifreq::new(dev)?.name.to_vec();
    name.truncate(dev.len() + 1);
    let mut flags = RTF_UP;
    if gateway.is_some() {
        flags |= RTF_GATEWAY;
    }
    if mask == Ipv4Addr::BROADCAST {
        flags |= RTF_HOST;
    }
    let mut rt = Rtentry {
        rt_pad1: 0,
        rt_dst: SockaddrIn::new(dst),
        rt_gateway: gateway.map(SockaddrIn::new).unwrap_or_default(),
        rt_genmask: SockaddrIn::new(mask),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: name.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT takes a `struct rtentry`; `rt_dev` points to
    // `name`, a NUL-terminated string alive until after the call.
    match unsafe { ioctl(sock, SIOCADDRT, &mut rt) } {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Brings the loopback interface up (the kernel gives it 127.0.0.1/8).
pub fn loopback_up() -> io::Result<()> {
    up(&socket()?, "lo")
}

/// `dev`: address and netmask, up, and the default route through the
/// gateway (after a host route to it when it is outside the prefix).
/// Each error names its step.
pub fn configure(dev: &str, p: &NetParams) -> Result<(), String> {
    let sock = socket().map_err(|e| format!("open a socket: {e}"))?;
    let step = |what: &str, r: io::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    let mut a = Ifreq::with_addr(dev, p.address).map_err(|e| e.to_string())?;
    // SAFETY: SIOCSIFADDR takes a `struct ifreq` holding `ifr_addr`.
    step(&format!("set {dev}'s address {}", p.address), unsafe {
        ioctl(&sock, SIOCSIFADDR, &mut a)
    })?;
    let mut m = Ifreq::with_addr(dev, p.netmask()).map_err(|e| e.to_string())?;
    // SAFETY: SIOCSIFNETMASK takes a `struct ifreq` holding `ifr_netmask`.
    step(&format!("set {dev}'s netmask /{}", p.prefix), unsafe {
        ioctl(&sock, SIOCSIFNETMASK, &mut m)
    })?;
    step(&format!("bring {dev} up"), up(&sock, dev))?;
    if let Some(gw) = p.gateway {
        if !p.gateway_on_link() {
            step(
                &format!("add a route to the gateway {gw} on {dev}"),
                add_route(&sock, dev, gw, Ipv4Addr::BROADCAST, None),
            )?;
        }
        step(
            &format!("add the default route via {gw}"),
            add_route(
                &sock,
                dev,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Some(gw),
            ),
        )?;
    }
    Ok(())
}

/// A configured `dev` given a new identity (a VM restored from a
/// snapshot): down (its routes go), the new MAC, then as [`configure`].
/// Setting the address replaces the one the snapshot had (the classic
/// ioctl changes the interface's primary address).
pub fn reconfigure(dev: &str, mac: [u8; 6], p: &NetParams) -> Result<(), String> {
    let sock = socket().map_err(|e| format!("open a socket: {e}"))?;
    down(&sock, dev).map_err(|e| format!("bring {dev} down: {e}"))?;
    set_mac(&sock, dev, mac).map_err(|e| format!("set {dev}'s MAC address: {e}"))?;
    drop(sock);
    configure(dev, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<SockaddrIn>(), 16);
        assert_eq!(std::mem::size_of::<Ifreq>(), 40);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<Rtentry>(), 120);
    }

    #[test]
    fn ifreq_holds_the_name_and_address() {
        let r = Ifreq::with_addr("eth0", Ipv4Addr::new(10, 0, 2, 15)).unwrap();
        assert_eq!(&r.name[..5], b"eth0\0");
        assert_eq!(&r.data[4..8], &[10, 0, 2, 15]);
        assert_eq!(
            u16::from_ne_bytes([r.data[0], r.data[1]]),
            libc::AF_INET as u16
        );
        assert!(Ifreq::new("a-name-far-too-long").is_err());
        assert!(Ifreq::new("").is_err());
    }

    fn ip(args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The real ioctls on a TAP NIC, in a network namespace of this
    /// test's thread (namespaces are per thread; `ip` runs in it too), so
    /// the machine's own network is never touched.
    #[test]
    fn configure_then_reconfigure_a_real_nic() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: a network namespace needs root (CI runs as root)");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare changes only this thread's network namespace;
            // nothing else runs on this thread.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", io::Error::last_os_error());
            // A TAP device: the kernels here have no dummy driver.
            ip(&["tuntap", "add", "d0", "mode", "tap"]);
            let first = NetParams {
                address: Ipv4Addr::new(10, 9, 0, 5),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 9, 0, 1)),
            };
            configure("d0", &first).unwrap();
            assert!(ip(&["-4", "-o", "addr", "show", "d0"]).contains("10.9.0.5/24"));
            assert!(ip(&["route", "show", "default"]).contains("via 10.9.0.1 dev d0"));

            // A fork's identity: new MAC, a /32 whose gateway is off-link.
            let second = NetParams {
                address: Ipv4Addr::new(10, 9, 1, 7),
                prefix: 32,
                gateway: Some(Ipv4Addr::new(10, 9, 1, 1)),
            };
            reconfigure("d0", [0x52, 0x54, 0, 0xab, 0xcd, 0x01], &second).unwrap();
            let addrs = ip(&["-4", "-o", "addr", "show", "d0"]);
            assert!(addrs.contains("10.9.1.7/32"), "{addrs}");
            assert!(!addrs.contains("10.9.0.5"), "the old address went: {addrs}");
            let link = ip(&["link", "show", "d0"]);
            assert!(link.contains("link/ether 52:54:00:ab:cd:01"), "{link}");
            assert!(link.contains(",UP"), "{link}");
            let routes = ip(&["route", "show"]);
            assert!(routes.contains("default via 10.9.1.1 dev d0"), "{routes}");
            assert!(routes.contains("10.9.1.1 dev d0"), "{routes}");
            assert!(!routes.contains("10.9.0.1"), "{routes}");
        })
        .join()
        .unwrap();
    }
}
