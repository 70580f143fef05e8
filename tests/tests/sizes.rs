//! The datapath's sizes as `[node]` sets them: the memory `xlb check` reports is what the kernel
//! accounts, and maps pinned at other sizes or layouts are refused by name. Run as root.

use std::{
    collections::BTreeMap,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

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

/// `map_type` of `union bpf_attr`.
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// Pins a new map of this type and these sizes at `path`, as another build of xlb would have.
fn pin_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) {
    // The head of `union bpf_attr` for BPF_MAP_CREATE and for BPF_OBJ_PIN; the kernel takes a
    // shorter attribute as if zero-filled.
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: i64 = 0;
    const BPF_OBJ_PIN: i64 = 6;
    let create = Create {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    // SAFETY: the kernel reads `size_of::<Create>()` bytes of `create`, which lives until then.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create as *const Create,
            size_of::<Create>(),
        )
    };
    assert!(fd >= 0, "create a map: {}", std::io::Error::last_os_error());
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path");
    let pin = Pin {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: as above; `name` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const Pin,
            size_of::<Pin>(),
        )
    };
    let pinned = std::io::Error::last_os_error();
    // SAFETY: our descriptor; the pin holds the map.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "pin {}: {pinned}", path.display());
}

/// The sizes the old-layout tests load with.
const SMALL: Sizes = Sizes {
    flows: 1024,
    listeners: 4,
    ring_slots: 4 * 2 * lb_common::RING_SIZE_DEFAULT,
    targets: 64,
};

/// Pins `name` as an older agent would have (`kind`, key and value sizes, `entries`), then loads
/// this build over it: the refusal's text.
fn refused_over_old_pin(name: &str, kind: u32, key: u32, value: u32, entries: u32) -> String {
    let _maps = MAPS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/xlb-test-layout-{name}-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).expect("pin dir");
    pin_map(&dir.0.join(name), kind, key, value, entries);
    let Err(e) = Dataplane::load_pinned(SMALL, Some(&dir.0)) else {
        panic!("a {name} map of {value}-byte values taken")
    };
    let text = e.to_string();
    assert!(matches!(e, DataplaneError::PinnedShape { .. }), "{text}");
    text
}

/// An agent from before per-listener table sizes pinned `VIPS` with 12-byte values (`index`,
/// `ring`, `flags`): this one refuses the map rather than read its entries as today's.
#[test]
fn a_vips_map_pinned_with_the_old_layout_is_refused() {
    let text = refused_over_old_pin("VIPS", BPF_MAP_TYPE_HASH, 20, 12, SMALL.listeners * 4);
    assert!(
        text.contains("VIPS holds 16 entries (hash, 20-byte keys, 12-byte values")
            && text.contains("need 16 entries (hash, 20-byte keys, 24-byte values"),
        "{text}"
    );
}

/// An agent from before NAT pinned `BACKENDS` with 24-byte values (no `port_be`): this one
/// refuses the map rather than read its backends without their ports.
#[test]
fn a_backends_map_pinned_before_nat_is_refused() {
    let text = refused_over_old_pin("BACKENDS", BPF_MAP_TYPE_ARRAY, 4, 24, SMALL.targets + 1);
    assert!(
        text.contains("BACKENDS holds 65 entries (array, 4-byte keys, 24-byte values")
            && text.contains("need 65 entries (array, 4-byte keys, 32-byte values"),
        "{text}"
    );
}
