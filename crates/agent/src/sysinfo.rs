//! What the guest looks like right now: uptime, stats, listening ports.
//! Reads `/proc` (parsed by [`crate::procfs`]) and `statvfs`.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader};

use banger_proto::agent::{DiskUsage, GuestStats, ListeningPort};

use crate::procfs;

fn read_small(path: &str) -> io::Result<String> {
    fs::read_to_string(path)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse {what}"))
}

/// Seconds since boot.
pub fn uptime() -> io::Result<f64> {
    procfs::parse_uptime(&read_small("/proc/uptime")?).ok_or_else(|| invalid("/proc/uptime"))
}

/// Uptime, load, CPU times, memory and disk usage. Cheap: a few small
/// `/proc` files and one `statvfs` per mounted disk.
pub fn stats() -> io::Result<GuestStats> {
    let uptime_s = uptime()?;
    let load = procfs::parse_loadavg(&read_small("/proc/loadavg")?)
        .ok_or_else(|| invalid("/proc/loadavg"))?;
    let cpu = first_cpu_line()?;
    let (mem_total, memory_available_bytes) = procfs::parse_meminfo(&read_small("/proc/meminfo")?)
        .ok_or_else(|| invalid("/proc/meminfo"))?;
    // The RAM the guest was given (present pages), not MemTotal, which
    // leaves out what the kernel reserved at boot (about 5% of 1 GiB).
    let page = rustix::param::page_size() as u64;
    let memory_total_bytes = std::fs::read_to_string("/proc/zoneinfo")
        .ok()
        .and_then(|t| procfs::parse_zoneinfo_present(&t))
        .map(|pages| pages.saturating_mul(page))
        .filter(|&present| present >= mem_total)
        .unwrap_or(mem_total);
    Ok(GuestStats {
        uptime_s,
        load,
        cpu,
        memory_total_bytes,
        memory_available_bytes,
        disks: disks(),
    })
}

/// `/proc/stat` can be long (one line per CPU and interrupt): read up to
/// the first `cpu` line only.
fn first_cpu_line() -> io::Result<banger_proto::agent::CpuTimes> {
    let f = BufReader::new(fs::File::open("/proc/stat")?);
    for line in f.lines() {
        let line = line?;
        if let Some(t) = procfs::parse_stat(&line) {
            return Ok(t);
        }
    }
    Err(invalid("/proc/stat"))
}

/// Usage of every disk filesystem mounted (see [`procfs::parse_mounts`]).
/// A mount whose `statvfs` fails is left out.
pub fn disks() -> Vec<DiskUsage> {
    let Ok(text) = read_small("/proc/mounts") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in procfs::parse_mounts(&text) {
        let Ok(st) = rustix::fs::statvfs(m.mount_point.as_str()) else {
            continue;
        };
        if st.f_blocks == 0 {
            continue;
        }
        let frsize = if st.f_frsize > 0 {
            st.f_frsize
        } else {
            st.f_bsize
        };
        let total_bytes = st.f_blocks.saturating_mul(frsize);
        let used_bytes = st
            .f_blocks
            .saturating_sub(st.f_bfree)
            .saturating_mul(frsize);
        out.push(DiskUsage {
            mount: m.mount_point,
            device: m.device,
            total_bytes,
            used_bytes,
        });
    }
    out
}

/// Listening TCP sockets and unconnected UDP sockets, with the process
/// holding each (the first one found, when several share it).
pub fn ports() -> Vec<ListeningPort> {
    let mut found: Vec<(&'static str, procfs::Socket)> = Vec::new();
    for (file, proto, udp) in [
        ("/proc/net/tcp", "tcp", false),
        ("/proc/net/tcp6", "tcp", false),
        ("/proc/net/udp", "udp", true),
        ("/proc/net/udp6", "udp", true),
    ] {
        let Ok(f) = fs::File::open(file) else {
            continue;
        };
        for line in BufReader::new(f).lines() {
            let Ok(line) = line else { break };
            if let Some(s) = procfs::parse_net_line(&line, udp) {
                found.push((proto, s));
            }
        }
    }
    let wanted: Vec<u64> = found
        .iter()
        .map(|(_, s)| s.inode)
        .filter(|&i| i != 0)
        .collect();
    let owners = socket_owners(&wanted);
    let mut out: Vec<ListeningPort> = found
        .into_iter()
        .map(|(proto, s)| {
            let owner = owners.get(&s.inode);
            ListeningPort {
                proto: proto.to_owned(),
                address: s.address.to_string(),
                port: s.port,
                pid: owner.map(|o| o.0),
                process: owner.map(|o| o.1.clone()),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.proto.as_str(), a.port, a.address.as_str()).cmp(&(
            b.proto.as_str(),
            b.port,
            b.address.as_str(),
        ))
    });
    out.dedup();
    out
}

/// Maps socket inodes to (pid, comm) by reading the `/proc/PID/fd` links;
/// stops as soon as every wanted inode has an owner.
fn socket_owners(wanted: &[u64]) -> HashMap<u64, (u32, String)> {
    let mut owners = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = link.to_str().and_then(procfs::socket_inode) else {
                continue;
            };
            if !wanted.contains(&inode) || owners.contains_key(&inode) {
                continue;
            }
            let c = comm
                .get_or_insert_with(|| {
                    read_small(&format!("/proc/{pid}/comm"))
                        .map(|s| s.trim_end_matches('\n').to_owned())
                        .unwrap_or_default()
                })
                .clone();
            owners.insert(inode, (pid, c));
        }
        if wanted.iter().all(|i| owners.contains_key(i)) {
            break;
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_stats() {
        let s = stats().unwrap();
        assert!(s.uptime_s > 0.0);
        assert!(s.memory_total_bytes > 0);
        assert!(s.memory_available_bytes <= s.memory_total_bytes);
        assert!(s.cpu.busy + s.cpu.idle > 0);
    }

    #[test]
    fn a_listener_of_this_process_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = ports();
        let p = ports
            .iter()
            .find(|p| p.proto == "tcp" && p.port == port && p.address == "127.0.0.1")
            .unwrap_or_else(|| panic!("port {port} not in {ports:?}"));
        assert_eq!(p.pid, Some(std::process::id()));
    }
}
