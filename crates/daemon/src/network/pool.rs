//! The warm pool of idle TAP devices: bookkeeping only (which names exist,
//! which are idle, which a VM holds). The helper calls that create and
//! delete devices are made by [`super::Network`] around it.

use std::collections::BTreeSet;

use banger_proto::helper::TAP_PREFIX;

/// Highest TAP number tried (the helper accepts up to five digits).
const MAX_INDEX: u32 = 99_999;

#[derive(Debug, Default)]
pub struct TapPool {
    idle: BTreeSet<String>,
    in_use: BTreeSet<String>,
    /// Names being created right now: not free to pick.
    pending: BTreeSet<String>,
    /// Names being deleted right now: not free to pick either.
    deleting: BTreeSet<String>,
}

impl TapPool {
    /// Takes an idle TAP for a VM.
    pub fn take(&mut self) -> Option<String> {
        let name = self.idle.pop_first()?;
        self.in_use.insert(name.clone());
        Some(name)
    }

    /// A free name for a new TAP, reserved until [`Self::created`] or
    /// [`Self::abandon`].
    pub fn reserve_name(&mut self) -> Option<String> {
        let name = (0..=MAX_INDEX)
            .map(|i| format!("{TAP_PREFIX}{i}"))
            .find(|n| {
                !self.idle.contains(n)
                    && !self.in_use.contains(n)
                    && !self.pending.contains(n)
                    && !self.deleting.contains(n)
            })?;
        self.pending.insert(name.clone());
        Some(name)
    }

    /// A reserved name now exists: idle, or held by a VM.
    pub fn created(&mut self, name: &str, for_vm: bool) {
        self.pending.remove(name);
        if for_vm {
            self.in_use.insert(name.to_owned());
        } else {
            self.idle.insert(name.to_owned());
        }
    }

    /// A reserved name was not created after all, or a TAP was deleted.
    pub fn abandon(&mut self, name: &str) {
        self.pending.remove(name);
        self.deleting.remove(name);
    }

    /// A VM let its TAP go. True when it went back to the idle pool; false
    /// when the pool is full and the caller should delete it (its name is
    /// then reserved until [`Self::abandon`]).
    pub fn give_back(&mut self, name: &str, max_idle: usize) -> bool {
        self.in_use.remove(name);
        if self.idle.len() < max_idle {
            self.idle.insert(name.to_owned());
            true
        } else {
            self.deleting.insert(name.to_owned());
            false
        }
    }

    /// Marks `name` held by a running VM (reconcile).
    pub fn adopt_in_use(&mut self, name: &str) {
        self.idle.remove(name);
        self.in_use.insert(name.to_owned());
    }

    /// Marks an existing, unheld TAP idle if the pool has room (reconcile);
    /// false means the caller should delete it.
    pub fn adopt_idle(&mut self, name: &str, max_idle: usize) -> bool {
        if self.in_use.contains(name) || self.idle.contains(name) {
            return true;
        }
        if self.idle.len() < max_idle {
            self.idle.insert(name.to_owned());
            true
        } else {
            false
        }
    }

    /// How many more idle TAPs the pool wants.
    pub fn missing(&self, target: usize) -> usize {
        // Names being created count as future idle ones, so two refills
        // at once do not overshoot.
        target.saturating_sub(self.idle.len() + self.pending.len())
    }

    pub fn idle(&self) -> Vec<String> {
        self.idle.iter().cloned().collect()
    }

    pub fn in_use(&self) -> Vec<String> {
        self.in_use.iter().cloned().collect()
    }

    /// Forgets everything (the bridge was rebuilt from scratch).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_reused_lowest_first_and_never_doubled() {
        let mut p = TapPool::default();
        let a = p.reserve_name().unwrap();
        let b = p.reserve_name().unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("bgtap0", "bgtap1"));
        assert_eq!(p.missing(3), 1);
        p.created(&a, false);
        p.created(&b, true);
        assert_eq!(p.take().as_deref(), Some("bgtap0"));
        assert_eq!(p.take(), None);
        assert_eq!(p.reserve_name().as_deref(), Some("bgtap2"));
        p.abandon("bgtap2");
        assert_eq!(p.in_use(), vec!["bgtap0", "bgtap1"]);
    }

    #[test]
    fn giving_back_fills_the_pool_up_to_its_target() {
        let mut p = TapPool::default();
        p.adopt_in_use("bgtap4");
        p.adopt_in_use("bgtap5");
        assert!(p.give_back("bgtap4", 1));
        assert!(!p.give_back("bgtap5", 1));
        assert_eq!(p.idle(), vec!["bgtap4"]);
        // bgtap5 is being deleted: not handed out meanwhile.
        assert_eq!(p.reserve_name().as_deref(), Some("bgtap0"));
        assert!(p.in_use().is_empty());
    }

    #[test]
    fn reconcile_keeps_what_fits() {
        let mut p = TapPool::default();
        p.adopt_in_use("bgtap1");
        assert!(p.adopt_idle("bgtap1", 0), "a held tap is kept");
        assert!(p.adopt_idle("bgtap2", 1));
        assert!(!p.adopt_idle("bgtap3", 1));
        assert_eq!(p.missing(1), 0);
        assert_eq!(p.missing(3), 2);
    }
}
