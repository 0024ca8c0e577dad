//! Whether a pid is our QEMU: a pid from `handles.json` may have been
//! reused, so `/proc/PID/exe` and the argv's `-qmp` (and `-name`) markers
//! are checked before anything is sent to it.

use std::ffi::OsStr;

use super::args::qmp_arg;
use super::check::check_id;
use super::{QemuVmm, name_arg};
use crate::error::VmmError;
use crate::proc;
use crate::spec::{BackendKind, VmHandle};

impl QemuVmm {
    /// The process is alive, is a QEMU, and its argv carries this handle's
    /// QMP socket (and, given `vm_id`, that VM's `-name` marker).
    pub(super) fn owns(&self, handle: &VmHandle, vm_id: Option<&str>) -> bool {
        if handle.backend != BackendKind::Qemu {
            return false;
        }
        if vm_id.is_some_and(|id| check_id("vm id", id).is_err()) {
            return false;
        }
        let pid = handle.pid;
        if !proc::is_alive(pid) || !proc::exe_is_qemu(pid) {
            return false;
        }
        let Some(argv) = proc::cmdline(pid) else {
            return false;
        };
        proc::has_option(&argv, "-qmp", &qmp_arg(&handle.control_socket))
            && vm_id.is_none_or(|id| proc::has_option(&argv, "-name", OsStr::new(&name_arg(id))))
    }

    pub(super) fn require_ours(&self, handle: &VmHandle) -> Result<(), VmmError> {
        if self.owns(handle, None) {
            Ok(())
        } else {
            Err(VmmError::NotRunning { pid: handle.pid })
        }
    }
}
