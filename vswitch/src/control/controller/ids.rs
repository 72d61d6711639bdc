//! Dense ids: ports, Subnets and Networks get the lowest free id, reused after a delete.

use std::collections::BTreeSet;

/// Dense ids: the lowest freed id first, else the next unused one, up to a limit.
#[derive(Debug)]
pub(super) struct IdPool {
    next: u32,
    free: BTreeSet<u32>,
    limit: u32,
}

impl IdPool {
    pub(super) fn new(limit: u32) -> IdPool {
        IdPool {
            next: 0,
            free: BTreeSet::new(),
            limit,
        }
    }

    pub(super) fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        if self.next >= self.limit {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    pub(super) fn release(&mut self, id: u32) {
        self.free.insert(id);
    }

    pub(super) fn available(&self) -> u64 {
        u64::from(self.limit - self.next) + u64::try_from(self.free.len()).unwrap_or(u64::MAX)
    }
}
