//! The datapath's sizes as `[node]` sets them: the memory `xlb check` reports is what the kernel
//! accounts, and maps pinned at other sizes are refused by name. Run as root.

use std::{collections::BTreeMap, path::PathBuf};

use xlb::dataplane::{Dataplane, DataplaneError, Sizes};

/// Held by each test while it has maps loaded: `memlock_by_map` reads every map this process
/// holds, and the tests of one binary run on threads of one process.
static MAPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `memlock` of every map this process holds, by map name (from `/proc/self/fdinfo`).
fn memlock_by_map() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for fd in std::fs::read_dir("/proc/self/fdinfo").expect("fdinfo") {
        let Ok(info) = std::fs::read_to_string(fd.expect("fd").path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) else {
            continue;
        };
        let Ok(map) = aya::maps::MapInfo::from_id(id as u32) else {
            continue;
        };
        if let Some(name) = map.name_as_str() {
            out.insert(name.to_owned(), memlock);
        }
    }
    out
}

/// Linux 6.4 and later account a map's memory as it is laid out (`map_mem_usage`); earlier
/// kernels report key + value per entry.
fn kernel_accounts_layout() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (6, 4)
}

#[test]
fn the_memory_xlb_check_reports_is_what_the_kernel_accounts() {
    let _maps = MAPS.lock().unwrap_or_else(|e| e.into_inner());
    if !kernel_accounts_layout() {
        eprintln!("skipped: this kernel reports no map memory usage (before 6.4)");
        return;
    }
    let sizes = Sizes {
        flows: 1 << 16,
        listeners: 8,
        ring_slots: 8 * 2 * lb_common::RING_SIZE_DEFAULT,
        targets: 2048,
    };
    let cpus = aya::util::nr_cpus().expect("CPUs");
    let estimate = sizes.memory(cpus).expect("estimate");
    let _dp = Dataplane::load(sizes).expect("load the maps");
    let kernel = memlock_by_map();
    let mut big = 0;
    for (name, bytes) in &estimate {
        let Some(&actual) = kernel.get(name) else {
            panic!("map {name} is not loaded: {kernel:?}")
        };
        // The kernel adds its map header: a few hundred bytes, about a KiB for hash maps.
        assert!(
            bytes.abs_diff(actual) <= 2048,
            "{name}: estimated {bytes}, the kernel accounts {actual}"
        );
        big += u64::from(*bytes > 1 << 20);
    }
    assert!(
        big >= 2,
        "the flow table and the rings are over 1 MiB: {estimate:?}"
    );
}

/// A pin directory of this test, removed when dropped (also when the test fails).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn maps_pinned_at_other_sizes_are_refused_and_the_pins_stay() {
    let _maps = MAPS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/xlb-test-sizes-{}",
        std::process::id()
    )));
    let sizes = Sizes {
        flows: 1024,
        listeners: 4,
        ring_slots: 4 * 2 * lb_common::RING_SIZE_DEFAULT,
        targets: 64,
    };
    drop(Dataplane::load_pinned(sizes, Some(&dir.0)).expect("pin the maps"));
    // The same sizes re-open the pins.
    drop(Dataplane::load_pinned(sizes, Some(&dir.0)).expect("re-open at the same sizes"));
    let more = Sizes {
        listeners: 8,
        ring_slots: 8 * 2 * lb_common::RING_SIZE_DEFAULT,
        ..sizes
    };
    let Err(e) = Dataplane::load_pinned(more, Some(&dir.0)) else {
        panic!("maps pinned for 4 listeners taken for 8")
    };
    let text = e.to_string();
    assert!(matches!(e, DataplaneError::PinnedShape { .. }), "{text}");
    assert!(
        ["RINGS", "VIPS", "VIP_STATS"]
            .iter()
            .any(|m| text.contains(m)),
        "{text}"
    );
    assert!(text.contains("xlb stop --detach"), "{text}");
    assert!(dir.0.join("FLOWS").exists(), "the pins stay");
}
