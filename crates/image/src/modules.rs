//! Kernel modules: the dependency graph (from `modules.dep`, or from each
//! module's own `.modinfo` section when the package ships none, as Debian's
//! do: `depmod` runs in their postinst), load order, decompression.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, Result};

/// Loading-order rules that no dependency expresses: `(before, after)`.
/// Debian's kernels need `virtio_ring` loaded before `virtio`.
pub(crate) const EXTRA_ORDER: &[(&str, &str)] = &[("virtio_ring", "virtio")];

/// One module file known to the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// Path relative to the modules dir, as in `modules.dep` (maybe compressed).
    pub rel_path: String,
    /// Hard dependencies (module names).
    pub deps: Vec<String>,
}

/// `kernel/drivers/net/virtio_net.ko.xz` -> `virtio_net` (dashes become underscores).
pub(crate) fn module_name(rel_path: &str) -> String {
    let file = rel_path.rsplit('/').next().unwrap_or(rel_path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The path of a module once decompressed: `x.ko.zst` -> `x.ko`.
pub(crate) fn uncompressed_rel_path(rel_path: &str) -> String {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(stripped) = rel_path.strip_suffix(ext) {
            return stripped.to_owned();
        }
    }
    rel_path.to_owned()
}

/// Parses `modules.dep`: `kernel/a.ko: kernel/b.ko kernel/c.ko`.
pub(crate) fn parse_modules_dep(text: &str) -> BTreeMap<String, Node> {
    let mut nodes = BTreeMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        if path.is_empty() {
            continue;
        }
        nodes.insert(
            module_name(path),
            Node {
                rel_path: path.to_owned(),
                deps: deps.split_whitespace().map(module_name).collect(),
            },
        );
    }
    nodes
}

/// Renders a graph in `modules.dep` format, each module followed by the
/// transitive closure of its dependencies (as depmod writes it).
pub(crate) fn render_modules_dep(nodes: &BTreeMap<String, Node>) -> String {
    let mut out = String::new();
    for node in nodes.values() {
        out.push_str(&node.rel_path);
        out.push(':');
        let mut seen = BTreeSet::new();
        let mut closure = Vec::new();
        let mut stack: Vec<&str> = node.deps.iter().rev().map(String::as_str).collect();
        while let Some(name) = stack.pop() {
            if !seen.insert(name) {
                continue;
            }
            if let Some(dep) = nodes.get(name) {
                closure.push(dep.rel_path.as_str());
                stack.extend(dep.deps.iter().rev().map(String::as_str));
            }
        }
        for path in closure {
            out.push(' ');
            out.push_str(path);
        }
        out.push('\n');
    }
    out
}

/// The load order for `wanted` and everything they need: every module
/// comes after its dependencies (hard, soft `pre:` and [`EXTRA_ORDER`]).
/// Names that `deps_of` does not know (built in, or absent) are skipped.
/// `deps_of` returns `None` for such names.
pub(crate) fn load_order(
    wanted: &[&str],
    deps_of: &mut dyn FnMut(&str) -> Result<Option<Vec<String>>>,
) -> Result<Vec<String>> {
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    let mut visiting = BTreeSet::new();
    for name in wanted {
        visit(name, deps_of, &mut done, &mut visiting, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    deps_of: &mut dyn FnMut(&str) -> Result<Option<Vec<String>>>,
    done: &mut BTreeSet<String>,
    visiting: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if done.contains(&name) || visiting.contains(&name) {
        return Ok(()); // already placed, or a cycle (ignored, as modprobe does)
    }
    let Some(mut deps) = deps_of(&name)? else {
        return Ok(());
    };
    for (before, after) in EXTRA_ORDER {
        if *after == name {
            deps.insert(0, (*before).to_owned());
        }
    }
    visiting.insert(name.clone());
    for dep in &deps {
        visit(dep, deps_of, done, visiting, order)?;
    }
    visiting.remove(&name);
    done.insert(name.clone());
    order.push(name);
    Ok(())
}

/// What a module's `.modinfo` says about its dependencies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ModInfo {
    pub name: Option<String>,
    pub depends: Vec<String>,
    /// `softdep=pre: a b`: modules to load before this one, if present.
    pub softdep_pre: Vec<String>,
}

/// Reads the `.modinfo` section of an (uncompressed) ELF64 little-endian module.
pub(crate) fn modinfo(elf: &[u8]) -> std::result::Result<ModInfo, String> {
    let section = modinfo_section(elf)?;
    let mut info = ModInfo::default();
    for entry in section.split(|b| *b == 0) {
        let entry = String::from_utf8_lossy(entry);
        if let Some(v) = entry.strip_prefix("depends=") {
            info.depends.extend(
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.replace('-', "_")),
            );
        } else if let Some(v) = entry.strip_prefix("name=") {
            info.name = Some(v.to_owned());
        } else if let Some(v) = entry.strip_prefix("softdep=") {
            let mut pre = false;
            for word in v.split_whitespace() {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    w if pre => info.softdep_pre.push(w.replace('-', "_")),
                    _ => {}
                }
            }
        }
    }
    Ok(info)
}

fn modinfo_section(elf: &[u8]) -> std::result::Result<&[u8], String> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |off: usize| -> std::result::Result<u64, String> {
        elf.get(off..off + 2)
            .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| "truncated ELF header".to_owned())
    };
    let u32_at = |off: usize| -> std::result::Result<u64, String> {
        elf.get(off..off + 4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .ok_or_else(|| "truncated ELF section table".to_owned())
    };
    let u64_at = |off: usize| -> std::result::Result<u64, String> {
        elf.get(off..off + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .ok_or_else(|| "truncated ELF section table".to_owned())
    };
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| "ELF offset too large".to_owned());
    let shoff = to_usize(u64_at(0x28)?)?;
    let shentsize = to_usize(u16_at(0x3a)?)?;
    let shnum = to_usize(u16_at(0x3c)?)?;
    let shstrndx = to_usize(u16_at(0x3e)?)?;
    if shentsize < 0x40 {
        return Err("bad ELF section header size".into());
    }
    let header = |i: usize| -> std::result::Result<(usize, usize, usize), String> {
        let base = shoff + i * shentsize;
        Ok((
            to_usize(u32_at(base)?)?,
            to_usize(u64_at(base + 0x18)?)?,
            to_usize(u64_at(base + 0x20)?)?,
        ))
    };
    let slice = |off: usize, size: usize| {
        elf.get(off..off.saturating_add(size))
            .ok_or_else(|| "ELF section out of bounds".to_owned())
    };
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = slice(str_off, str_size)?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
        let name = names
            .get(name_off..)
            .and_then(|rest| rest.split(|b| *b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            return slice(off, size);
        }
    }
    Err("no .modinfo section".into())
}

/// Reads a module file, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz`.
pub(crate) fn read_module(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).map_err(|e| ImageError::io("read", path, e))?;
    let bad = |reason: String| ImageError::Module {
        path: path.to_owned(),
        reason,
    };
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
            .map_err(|e| bad(format!("xz: {e}")))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        let mut out = Vec::new();
        ruzstd::StreamingDecoder::new(raw.as_slice())
            .map_err(|e| bad(format!("zstd: {e}")))?
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("zstd: {e}")))?;
        Ok(out)
    } else if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Every module file under `dir` (relative paths), for packages without `modules.dep`.
fn find_module_files(dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let entries = fs::read_dir(&abs).map_err(|e| ImageError::io("read dir", &abs, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("read dir", &abs, e))?;
            let file_type = entry
                .file_type()
                .map_err(|e| ImageError::io("stat", entry.path(), e))?;
            let child = rel.join(entry.file_name());
            if file_type.is_dir() {
                stack.push(child);
            } else if file_type.is_file() {
                let s = child.to_string_lossy().into_owned();
                if s.ends_with(".ko") || s.contains(".ko.") {
                    found.push(s);
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The modules of one kernel: `dir` is `.../lib/modules/VERSION`.
#[derive(Debug)]
pub(crate) struct ModuleSet {
    pub dir: PathBuf,
    pub nodes: BTreeMap<String, Node>,
}

impl ModuleSet {
    /// Reads `modules.dep` when present, else scans every module's `.modinfo`.
    pub fn load(dir: &Path) -> Result<Self> {
        let dep_file = dir.join("modules.dep");
        if dep_file.is_file() {
            let text =
                fs::read_to_string(&dep_file).map_err(|e| ImageError::io("read", &dep_file, e))?;
            return Ok(Self {
                dir: dir.to_owned(),
                nodes: parse_modules_dep(&text),
            });
        }
        let mut nodes = BTreeMap::new();
        for rel in find_module_files(dir)? {
            let path = dir.join(&rel);
            let data = read_module(&path)?;
            let info = modinfo(&data).map_err(|reason| ImageError::Module {
                path: path.clone(),
                reason,
            })?;
            let name = info
                .name
                .map(|n| n.replace('-', "_"))
                .unwrap_or_else(|| module_name(&rel));
            nodes.insert(
                name,
                Node {
                    rel_path: rel,
                    deps: info.depends,
                },
            );
        }
        Ok(Self {
            dir: dir.to_owned(),
            nodes,
        })
    }

    /// The modules to load for `wanted`, in order, each with its uncompressed bytes.
    pub fn closure(&self, wanted: &[&str]) -> Result<Vec<(Node, Vec<u8>)>> {
        let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut deps_of = |name: &str| -> Result<Option<Vec<String>>> {
            let Some(node) = self.nodes.get(name) else {
                return Ok(None);
            };
            let path = self.dir.join(&node.rel_path);
            let bytes = read_module(&path)?;
            let info = modinfo(&bytes).map_err(|reason| ImageError::Module {
                path: path.clone(),
                reason,
            })?;
            data.insert(name.to_owned(), bytes);
            let mut deps = node.deps.clone();
            // Soft pre-dependencies only where they exist as modules.
            deps.extend(
                info.softdep_pre
                    .into_iter()
                    .filter(|d| self.nodes.contains_key(d)),
            );
            Ok(Some(deps))
        };
        let order = load_order(wanted, &mut deps_of)?;
        Ok(order
            .into_iter()
            .filter_map(|name| {
                let node = self.nodes.get(&name)?.clone();
                let bytes = data.remove(&name)?;
                Some((node, bytes))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/acpi/button.ko:
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/unrelated/thing.ko: kernel/drivers/virtio/virtio.ko
";

    fn order_from(dep: &str, wanted: &[&str]) -> Vec<String> {
        let nodes = parse_modules_dep(dep);
        let mut deps_of = |name: &str| -> Result<Option<Vec<String>>> {
            Ok(nodes.get(name).map(|n| n.deps.clone()))
        };
        load_order(wanted, &mut deps_of).unwrap()
    }

    fn pos(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name} not in {order:?}"))
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(
            module_name("kernel/drivers/x/snd-hda-intel.ko"),
            "snd_hda_intel"
        );
        assert_eq!(module_name("virtio_net.ko.zst"), "virtio_net");
        assert_eq!(uncompressed_rel_path("kernel/a/b.ko.zst"), "kernel/a/b.ko");
        assert_eq!(uncompressed_rel_path("kernel/a/b.ko"), "kernel/a/b.ko");
    }

    #[test]
    fn closure_is_complete_and_ordered() {
        let wanted = [
            "virtio_mmio",
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "virtio_console",
            "ext4",
            "button",
        ];
        let order = order_from(DEP, &wanted);
        // Everything needed, nothing unrelated, nothing twice.
        let set: BTreeSet<&str> = order.iter().map(String::as_str).collect();
        assert_eq!(set.len(), order.len());
        assert!(!set.contains("thing"));
        for name in [
            "virtio",
            "virtio_ring",
            "virtio_pci_legacy_dev",
            "virtio_pci_modern_dev",
            "failover",
            "net_failover",
            "jbd2",
            "mbcache",
            "crc16",
        ] {
            assert!(set.contains(name), "{name} missing from {order:?}");
        }
        // Every module after its dependencies.
        let nodes = parse_modules_dep(DEP);
        for name in &order {
            for dep in &nodes[name].deps {
                assert!(pos(&order, dep) < pos(&order, name), "{dep} after {name}");
            }
        }
        assert!(pos(&order, "virtio_ring") < pos(&order, "virtio"));
        assert!(pos(&order, "virtio") < pos(&order, "virtio_mmio"));
    }

    #[test]
    fn virtio_ring_before_virtio_even_when_listed_after() {
        // virtio_mmio lists virtio first; the extra rule still wins.
        let order = order_from(DEP, &["virtio_mmio"]);
        assert_eq!(order, ["virtio_ring", "virtio", "virtio_mmio"]);
        let order = order_from(DEP, &["virtio"]);
        assert_eq!(order, ["virtio_ring", "virtio"]);
    }

    #[test]
    fn builtin_or_absent_modules_are_skipped() {
        let dep = "kernel/drivers/virtio/virtio_blk.ko:\n";
        // ext4 built in, virtio_ring/virtio built in: only virtio_blk is loaded.
        assert_eq!(
            order_from(dep, &["ext4", "virtio_blk", "nope"]),
            ["virtio_blk"]
        );
    }

    #[test]
    fn cycles_terminate() {
        let dep = "a.ko: b.ko\nb.ko: a.ko\n";
        let order = order_from(dep, &["a"]);
        assert_eq!(order, ["b", "a"]);
    }

    #[test]
    fn renders_transitive_modules_dep() {
        let mut nodes = BTreeMap::new();
        let node = |p: &str, d: &[&str]| Node {
            rel_path: p.into(),
            deps: d.iter().map(|s| (*s).to_owned()).collect(),
        };
        nodes.insert("a".into(), node("kernel/a.ko", &["b"]));
        nodes.insert("b".into(), node("kernel/b.ko", &["c"]));
        nodes.insert("c".into(), node("kernel/c.ko", &[]));
        let text = render_modules_dep(&nodes);
        assert_eq!(
            text,
            "kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\n"
        );
        assert_eq!(parse_modules_dep(&text)["a"].deps, ["b", "c"]);
    }

    /// A minimal ELF64 LE file with a `.modinfo` section, as the kernel builds them.
    pub(crate) fn fake_module(modinfo: &str) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let info = modinfo.replace('\n', "\0");
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        let info_off = elf.len();
        elf.extend_from_slice(info.as_bytes());
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        while elf.len() % 8 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 0x40];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, info_off, info.len());
        sh(10, str_off, shstrtab.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_modinfo() {
        let elf = fake_module(
            "license=GPL\ndepends=virtio,virtio-ring\nname=virtio_mmio\nsoftdep=pre: crc32c post: foo\n",
        );
        let info = modinfo(&elf).unwrap();
        assert_eq!(info.name.as_deref(), Some("virtio_mmio"));
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(info.softdep_pre, ["crc32c"]);
        assert_eq!(modinfo(b"not elf").unwrap_err(), "not an ELF file");
        let mut truncated = elf.clone();
        truncated.truncate(0x50);
        assert!(modinfo(&truncated).is_err());
    }

    #[test]
    fn decompresses_xz_and_zstd_modules() {
        let dir = tempfile::tempdir().unwrap();
        let module = fake_module("depends=virtio\nname=m\n");
        let plain = dir.path().join("m.ko");
        fs::write(&plain, &module).unwrap();
        // The kernel's own invocations (scripts/Makefile.modinst).
        for (tool, args, ext) in [
            (
                "xz",
                &["--check=crc32", "--lzma2=dict=1MiB", "-k"][..],
                "xz",
            ),
            ("zstd", &["-q", "-k", "-T0", "--ultra", "-22"][..], "zst"),
        ] {
            let Ok(status) = std::process::Command::new(tool)
                .args(args)
                .arg(&plain)
                .status()
            else {
                eprintln!("{tool} not installed, skipping .ko.{ext}");
                continue;
            };
            assert!(status.success(), "{tool} failed");
            let packed = dir.path().join(format!("m.ko.{ext}"));
            assert_eq!(read_module(&packed).unwrap(), module, ".ko.{ext}");
            fs::write(&packed, b"garbage").unwrap();
            let err = read_module(&packed).unwrap_err();
            assert!(matches!(err, ImageError::Module { .. }), "{err}");
        }
    }

    #[test]
    fn module_set_without_modules_dep_uses_modinfo_and_decompresses() {
        let dir = tempfile::tempdir().unwrap();
        let kdir = dir.path().join("kernel/drivers/virtio");
        fs::create_dir_all(&kdir).unwrap();
        fs::write(
            kdir.join("virtio.ko"),
            fake_module("depends=\nname=virtio\n"),
        )
        .unwrap();
        fs::write(
            kdir.join("virtio_ring.ko"),
            fake_module("depends=\nname=virtio_ring\n"),
        )
        .unwrap();
        let blk = fake_module("depends=virtio,virtio_ring\nname=virtio_blk\nsoftdep=pre: crc32c\n");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &blk).unwrap();
        fs::write(kdir.join("virtio_blk.ko.gz"), gz.finish().unwrap()).unwrap();
        fs::write(
            kdir.join("crc32c.ko"),
            fake_module("depends=\nname=crc32c\n"),
        )
        .unwrap();

        let set = ModuleSet::load(dir.path()).unwrap();
        assert!(!dir.path().join("modules.dep").exists());
        let closure = set.closure(&["virtio_blk", "ext4"]).unwrap();
        let names: Vec<String> = closure
            .iter()
            .map(|(n, _)| module_name(&n.rel_path))
            .collect();
        assert_eq!(names, ["virtio_ring", "virtio", "crc32c", "virtio_blk"]);
        // The compressed module comes back decompressed.
        assert_eq!(closure[3].1, blk);
        // And the rendered modules.dep reads back the same graph.
        let text = render_modules_dep(&set.nodes);
        assert!(text.contains(
            "kernel/drivers/virtio/virtio_blk.ko.gz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        ));
    }
}
