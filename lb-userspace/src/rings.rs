//! Where each listener's Maglev tables lie in `RINGS`, one flat array of `node.maglev_slots`
//! slots: listeners choose their table size (`maglev_table_size`), so a table is a segment of the
//! array, allocated here, and `VipMeta` names the segments of a listener's live and previous
//! tables.
//!
//! Allocation is best fit (the shortest free run that holds the table, the lowest first), and a
//! freed segment merges with the free runs beside it. Tables of one size, the common case, then
//! never fragment the space. With mixed sizes the free slots may be enough in all but not in one
//! run: that is refused ([`RingSpaceError::Full`] says so), never moved around under the
//! datapath's feet.

use std::collections::BTreeMap;

use thiserror::Error;

/// A run of `RINGS` slots that holds one Maglev table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    /// Its first slot.
    pub base: u32,
    /// Its slots: the table's size M.
    pub size: u32,
}

impl Segment {
    fn end(self) -> u64 {
        u64::from(self.base) + u64::from(self.size)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingSpaceError {
    #[error(
        "no run of {size} free slots for a Maglev table: {free} of node.maglev_slots ({capacity}) \
         are free, the longest run {largest}{}",
        if *free >= u64::from(*size) { " (tables of other sizes split the free space)" } else { "" }
    )]
    Full {
        size: u32,
        free: u64,
        largest: u32,
        capacity: u32,
    },
    /// A segment read back from the datapath that is not free: outside the space, or overlapping
    /// another listener's.
    #[error("slots {}..{} are outside RINGS ({capacity} slots) or taken twice", .segment.base, .segment.end())]
    Taken { segment: Segment, capacity: u32 },
}

/// The free and taken slots of `RINGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSpace {
    capacity: u32,
    /// Free runs: first slot → length. Never two adjacent ones (they merge).
    free: BTreeMap<u32, u32>,
}

impl RingSpace {
    /// All of `capacity` slots free.
    pub fn new(capacity: u32) -> RingSpace {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        RingSpace { capacity, free }
    }

    /// Takes `size` slots: the shortest free run that holds them, the lowest of equals.
    pub fn alloc(&mut self, size: u32) -> Result<Segment, RingSpaceError> {
        let Some((&base, &len)) = self
            .free
            .iter()
            .filter(|&(_, &len)| len >= size)
            .min_by_key(|&(&base, &len)| (len, base))
        else {
            return Err(RingSpaceError::Full {
                size,
                free: self.free_slots(),
                largest: self.free.values().copied().max().unwrap_or(0),
                capacity: self.capacity,
            });
        };
        self.free.remove(&base);
        if len > size {
            self.free.insert(base + size, len - size);
        }
        Ok(Segment { base, size })
    }

    /// Takes `segment` as it is: one an earlier agent allocated, read back from the datapath.
    pub fn claim(&mut self, segment: Segment) -> Result<(), RingSpaceError> {
        let taken = RingSpaceError::Taken {
            segment,
            capacity: self.capacity,
        };
        let Some((&base, &len)) = self.free.range(..=segment.base).next_back() else {
            return Err(taken);
        };
        let run = Segment { base, size: len };
        if segment.size == 0 || segment.end() > run.end() {
            return Err(taken);
        }
        self.free.remove(&base);
        if segment.base > base {
            self.free.insert(base, segment.base - base);
        }
        if run.end() > segment.end() {
            self.free.insert(
                segment.base + segment.size,
                (run.end() - segment.end()) as u32,
            );
        }
        Ok(())
    }

    /// Gives `segment` back; it merges with the free runs around it.
    pub fn free(&mut self, segment: Segment) {
        let (mut base, mut size) = (segment.base, segment.size);
        if let Some((&b, &len)) = self.free.range(..base).next_back()
            && u64::from(b) + u64::from(len) == u64::from(base)
        {
            self.free.remove(&b);
            base = b;
            size += len;
        }
        if let Some(len) = self.free.remove(&(segment.base + segment.size)) {
            size += len;
        }
        self.free.insert(base, size);
    }

    /// Free slots in all.
    pub fn free_slots(&self) -> u64 {
        self.free.values().map(|&l| u64::from(l)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: u32, size: u32) -> Segment {
        Segment { base, size }
    }

    #[test]
    fn tables_are_placed_one_after_another_and_never_overlap() {
        let mut s = RingSpace::new(100);
        assert_eq!(s.alloc(13), Ok(seg(0, 13)));
        assert_eq!(s.alloc(13), Ok(seg(13, 13)));
        assert_eq!(s.alloc(7), Ok(seg(26, 7)));
        assert_eq!(s.free_slots(), 67);
        assert_eq!(s.alloc(67), Ok(seg(33, 67)));
        assert_eq!(s.free_slots(), 0);
        let e = s.alloc(1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no run of 1 free slots for a Maglev table: 0 of node.maglev_slots (100) are free, \
             the longest run 0"
        );
    }

    #[test]
    fn a_removed_listeners_tables_are_reused_and_free_runs_merge() {
        let mut s = RingSpace::new(40);
        let a = s.alloc(10).unwrap();
        let b = s.alloc(10).unwrap();
        let c = s.alloc(10).unwrap();
        s.free(a);
        s.free(c);
        // Three free runs would be wrong: c merges with the tail.
        assert_eq!(s.free, BTreeMap::from([(0, 10), (20, 20)]));
        s.free(b);
        assert_eq!(s, RingSpace::new(40), "all one run again");
        assert_eq!(s.alloc(40), Ok(seg(0, 40)));
    }

    #[test]
    fn a_size_change_takes_the_best_fitting_run() {
        let mut s = RingSpace::new(100);
        let tables: Vec<Segment> = (0..5).map(|_| s.alloc(13).unwrap()).collect();
        // A listener grows from 13 to 17: its standby (13) is freed, 17 are taken from the tail,
        // not from the hole, which a table of 13 fits exactly.
        s.free(tables[1]);
        assert_eq!(s.alloc(17), Ok(seg(65, 17)));
        assert_eq!(s.alloc(13), Ok(tables[1]));
    }

    #[test]
    fn fragmented_space_is_refused_by_name() {
        let mut s = RingSpace::new(30);
        let t: Vec<Segment> = (0..3).map(|_| s.alloc(10).unwrap()).collect();
        s.free(t[0]);
        s.free(t[2]);
        let e = s.alloc(20).unwrap_err();
        assert_eq!(
            e,
            RingSpaceError::Full {
                size: 20,
                free: 20,
                largest: 10,
                capacity: 30
            }
        );
        assert!(
            e.to_string()
                .ends_with("the longest run 10 (tables of other sizes split the free space)"),
            "{e}"
        );
        // The refusal changed nothing.
        assert_eq!(s.alloc(10), Ok(t[0]));
    }

    #[test]
    fn segments_read_back_are_claimed_and_overlaps_refused() {
        let mut s = RingSpace::new(100);
        s.claim(seg(20, 10)).unwrap();
        s.claim(seg(30, 5)).unwrap();
        s.claim(seg(0, 10)).unwrap();
        assert_eq!(s.free, BTreeMap::from([(10, 10), (35, 65)]));
        for bad in [seg(25, 10), seg(5, 1), seg(95, 10), seg(100, 1), seg(50, 0)] {
            assert!(
                matches!(s.claim(bad), Err(RingSpaceError::Taken { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(s.alloc(10), Ok(seg(10, 10)));
    }
}
