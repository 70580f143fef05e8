//! `cargo xtask vm`: the end-to-end suite inside a QEMU virtual machine built from Debian packages
//! only, and `cargo xtask bench pktgen`, the kernel's packet generator against xlb in that VM.
//!
//! - **Host packages**: debootstrap, e2fsprogs and QEMU, installed like `setup` does. When apt
//!   could only install `qemu-system-x86` by removing a package the host has (a newer
//!   `qemu-utils` from backports breaks Debian 12's QEMU), its libraries are installed and the two
//!   QEMU packages are unpacked under `target/xlb-vm/host/` instead: the host keeps its packages.
//! - **Image** (`target/xlb-vm/image-HASH/`): debootstrap of Debian 12 from the host's Debian
//!   mirror with Debian's `linux-image-amd64`, then `vagrant/provision.sh runtime` in a chroot (the
//!   same script the Vagrant box runs), and `vagrant/vm-init.sh` as the guest's init. `mkfs.ext4 -d`
//!   makes the disk from the directory, so nothing is loop-mounted. HASH covers what goes in it
//!   (both scripts, the package list, the mirror, the kernel package version apt offers): the image
//!   is rebuilt only when one of them changes, or with `--rebuild`.
//! - **Payload**: a second ext4 disk with the binaries built on the host (`xlb`, `xlb-lab`, the test
//!   executables) and a `job.sh`. The guest mounts it at the host's `target/release`, so the
//!   compile-time paths in the test binaries (`CARGO_BIN_EXE_xlb-lab`) and `agent::xlb_bin` (the
//!   `xlb` beside `deps/`) hold inside the VM as they do on the host.
//! - **Boot**: `-kernel`/`-initrd` from the image, root disk as a snapshot (the cached image never
//!   changes), no network device (`-nic none`), serial console on stdio. KVM when `/dev/kvm` opens
//!   and a guest boots with it within a minute, else TCG; the verdict is cached per host kernel.
//!   The guest prints `XLB-VM-RESULT: rc=N` and powers off; that N is the exit code here. Every wait
//!   is bounded and QEMU is killed on any failure.
//! - **The package** (`--package`): `cargo xtask dist`'s `.deb` and `vagrant/package-test.sh` on
//!   the payload, and the guest booted with systemd as PID 1 (`init=/lib/systemd/systemd`;
//!   the image has systemd, unused by the suite's boot). `vagrant/xlb-vm-job.service` then runs
//!   the same init script as a service, which runs the job and prints the result line.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    paths::{target_dir, workspace_root},
    toolchain::DEBIAN_PACKAGES,
};

/// The Debian release of the guest's userland: the host's own, whose glibc the binaries built
/// here link against. The kernel comes from the release that `--kernel` names.
const USERLAND: &str = "bookworm";
/// Packages debootstrap adds to its minimal base: the guest's init helpers, and systemd for
/// `--package` (its unit is what the package test runs; `init-system-helpers` holds the
/// `deb-systemd-helper` of the package's maintainer scripts). The provisioning script installs
/// the rest (`provision.sh runtime`), then the kernel is installed.
const IMAGE_PACKAGES: &[&str] = &["tini", "bash", "systemd", "init-system-helpers"];
/// Mirror when the host's apt sources name no Debian one.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Host packages the VM needs, besides QEMU.
const HOST_PACKAGES: &[&str] = &["debootstrap", "e2fsprogs", "coreutils", "util-linux"];
/// The guest's init, as installed in the image.
const GUEST_INIT: &str = "/usr/local/sbin/xlb-vm-init";
/// The unit that runs the guest's init script as a service when systemd boots the guest.
const GUEST_JOB_UNIT: &str = "xlb-vm-job.service";
/// The kernel command line's init when systemd boots the guest (`--package`): no status lines
/// and no login prompt on the console the host reads, and no first-boot questions.
const SYSTEMD_INIT: &str = "init=/lib/systemd/systemd systemd.show_status=false \
                            systemd.mask=serial-getty@ttyS0.service \
                            systemd.mask=systemd-firstboot.service";
/// The serial console line that ends a run.
const RESULT_MARKER: &str = "XLB-VM-RESULT: rc=";
/// The serial console line that says the guest's init runs.
const INIT_MARKER: &str = "xlb-vm: init";
/// A file the job hands back: `XLB-VM-FILE NAME: CONTENT` (one line).
const FILE_MARKER: &str = "XLB-VM-FILE ";
/// Tests skipped in a TCG guest (binary, test, why): their own time limits assume a real CPU.
const TCG_SKIPS: &[(&str, &str, &str)] = &[];
/// How long a KVM guest may take to reach its init before TCG is tried instead.
const KVM_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a TCG guest may take to reach its init.
const TCG_BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on debootstrap and the provisioning.
const BUILD_TIMEOUT_SECS: u64 = 1800;

/// A Debian release whose kernel (its `linux-image-amd64`) the guest boots.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Kernel {
    /// Debian 11: Linux 5.10.
    Bullseye,
    /// Debian 12: Linux 6.1.
    Bookworm,
    /// Debian 13: Linux 6.12.
    Trixie,
}

impl Kernel {
    fn suite(self) -> &'static str {
        match self {
            Kernel::Bullseye => "bullseye",
            Kernel::Bookworm => "bookworm",
            Kernel::Trixie => "trixie",
        }
    }
}

/// The end-to-end suite on every kernel: all packet fixtures, the stack budget, the property
/// test (a shorter run, see `test_job`), `xlb attach`, and the labs.
const DEFAULT_TESTS: &str = "stack,fixtures,fixtures_v4,fixtures_v6,fixtures_icmp,fixtures_fragments,\
                             fixtures_malformed,fixtures_decap,fixtures_fib,fixtures_nat,fixtures_snat,second_chance,property,\
                             sizes,lab,attach,l4_lab,agent_lab,nat_lab,snat_lab";

#[derive(clap::Args)]
pub struct VmArgs {
    /// The kernels to run on, comma-separated: each gets an image of its own, and the VMs run
    /// side by side.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bookworm")]
    kernel: Vec<Kernel>,
    /// Boot with a shell on the console (the payload is mounted at target/release; exit the shell,
    /// or press Ctrl-A X, to power off).
    #[arg(long)]
    shell: bool,
    /// auto: KVM when a guest boots with it, else TCG (software emulation).
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// The integration tests of xlb-tests to run (`all` for every one), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_TESTS)]
    tests: Vec<String>,
    /// Give up (and kill the VM) after this many seconds.
    #[arg(long, default_value_t = 2400)]
    timeout: u64,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 3072)]
    memory: u32,
    /// Rebuild the image even when the cached one is current.
    #[arg(long)]
    rebuild: bool,
    /// Instead of the suite: build the Debian package (`cargo xtask dist`), boot the guest with
    /// systemd and test the package there (vagrant/package-test.sh): install, start, reload,
    /// restart on failure, stop, remove, purge.
    #[arg(long, conflicts_with = "shell")]
    package: bool,
    /// Arguments for every test binary (a name filter, `--test-threads=1`, ...).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// Paths of the VM work area.
struct Dirs {
    /// The workspace root.
    root: PathBuf,
    /// `target/release`: where the host builds, and where the guest mounts the payload.
    release: PathBuf,
    /// `target/xlb-vm`.
    work: PathBuf,
}

impl Dirs {
    fn new() -> Result<Dirs> {
        let root = workspace_root()?;
        let target = target_dir()?;
        let work = target.join("xlb-vm");
        fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
        Ok(Dirs {
            release: target.join("release"),
            work,
            root,
        })
    }

    fn script(&self, name: &str) -> PathBuf {
        self.root.join("vagrant").join(name)
    }
}

/// `cargo xtask vm`.
pub fn run(args: VmArgs) -> Result<()> {
    ensure_root()?;
    let dirs = Dirs::new()?;
    let qemu = host_packages(&dirs).context("vm: host packages")?;
    crate::setup::run()?;
    if args.package {
        return package(&dirs, &qemu, &args);
    }
    let t = Instant::now();
    crate::build_xlb("release")?;
    let tests = build_tests(&args.tests)?;
    say(&format!("host build: {:.0} s", t.elapsed().as_secs_f64()));
    if args.shell {
        let kernel = args.kernel[0];
        let (image, _) = image(&dirs, kernel, args.rebuild).context("vm: image")?;
        let mut vm = Vm::new(&dirs, qemu, image, kernel, &args);
        let accel = pick_accel(&dirs, &vm, args.accel)?;
        vm.payload = payload(&dirs, &tests, None).context("vm: payload")?;
        return vm.shell(accel);
    }
    let job = test_job(&dirs, &tests, &args.args, args.timeout)?;
    let payload = payload(&dirs, &tests, Some(&job)).context("vm: payload")?;
    // One thread per kernel: each builds its image (cached) and runs the suite in its own VM.
    // Side by side they take about the time of one: a guest under TCG mostly waits.
    let timeout = Duration::from_secs(args.timeout);
    let runs: Vec<(Kernel, Result<(Outcome, Duration)>)> = thread::scope(|scope| {
        let handles: Vec<_> = args
            .kernel
            .iter()
            .map(|&kernel| {
                let (dirs, qemu, payload, args) = (&dirs, &qemu, &payload, &args);
                scope.spawn(move || {
                    let (image, built) = image(dirs, kernel, args.rebuild)
                        .with_context(|| format!("vm: the {} image", kernel.suite()))?;
                    let mut vm = Vm::new(dirs, qemu.clone(), image, kernel, args);
                    vm.payload = payload.clone();
                    let out = boot_with_fallback(dirs, &vm, args.accel, timeout)?;
                    Ok((out, built))
                })
            })
            .collect();
        args.kernel
            .iter()
            .zip(handles)
            .map(|(&k, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the VM thread panicked")));
                (k, r)
            })
            .collect()
    });
    let mut failed = Vec::new();
    for (kernel, r) in &runs {
        let name = kernel.suite();
        match r {
            Ok((out, built)) => {
                say(&format!(
                    "{name}: kernel {} ({:?}): {} tests passed, {} failed, {} ignored in {} \
                     binaries; {:.0} s in the guest, image {:.0} s; exit code {}; console log {}",
                    out.kernel,
                    out.accel,
                    out.tests.passed,
                    out.tests.failed,
                    out.tests.ignored,
                    out.tests.binaries,
                    out.run_time.as_secs_f64(),
                    built.as_secs_f64(),
                    out.rc,
                    console_log(&dirs, *kernel).display(),
                ));
                if out.rc != 0 {
                    failed.push(name);
                }
            }
            Err(e) => {
                say(&format!("{name}: no result: {e:#}"));
                failed.push(name);
            }
        }
    }
    ensure!(
        failed.is_empty(),
        "the end-to-end suite failed in the VM on {}",
        failed.join(", ")
    );
    Ok(())
}

/// `cargo xtask vm --package`: the `.deb` of `cargo xtask dist` under systemd, on each kernel
/// in turn.
fn package(dirs: &Dirs, qemu: &Path, args: &VmArgs) -> Result<()> {
    let t = Instant::now();
    let deb = crate::dist::build(false)?;
    say(&format!(
        "package {}: {:.0} s",
        deb.display(),
        t.elapsed().as_secs_f64()
    ));
    let name = deb
        .file_name()
        .context("the package's file name")?
        .to_string_lossy()
        .into_owned();
    let job = format!(
        "#!/bin/sh
# written by `cargo xtask vm --package`
exec bash ./package-test.sh ./{}
",
        shell_words(&[name])
    );
    let stage = dirs.work.join("payload-package");
    remove_tree(&stage)?;
    fs::create_dir_all(&stage)?;
    for from in [deb.clone(), dirs.script("package-test.sh")] {
        let to = stage.join(from.file_name().context("a file name")?);
        fs::copy(&from, &to).with_context(|| format!("copy {}", from.display()))?;
    }
    let payload = disk(dirs, &stage, Some(&job), "payload-package.img").context("vm: payload")?;
    let mut failed = Vec::new();
    for &kernel in &args.kernel {
        let suite = kernel.suite();
        let (image, built) =
            image(dirs, kernel, args.rebuild).with_context(|| format!("vm: the {suite} image"))?;
        let mut vm = Vm::new(dirs, qemu.to_path_buf(), image, kernel, args);
        vm.payload = payload.clone();
        vm.systemd = true;
        vm.log = dirs.work.join(format!("console-package-{suite}.log"));
        let out = boot_with_fallback(dirs, &vm, args.accel, Duration::from_secs(args.timeout))?;
        say(&format!(
            "{suite}: the package under systemd, kernel {} ({:?}): {} checks passed, {} failed; \
             {:.0} s in the guest, image {:.0} s; exit code {}; console log {}",
            out.kernel,
            out.accel,
            out.tests.passed,
            out.tests.failed,
            out.run_time.as_secs_f64(),
            built.as_secs_f64(),
            out.rc,
            vm.log.display(),
        ));
        if out.rc != 0 || out.tests.passed == 0 {
            failed.push(suite);
        }
    }
    ensure!(
        failed.is_empty(),
        "the package test failed in the VM on {}",
        failed.join(", ")
    );
    Ok(())
}

fn console_log(dirs: &Dirs, kernel: Kernel) -> PathBuf {
    dirs.work.join(format!("console-{}.log", kernel.suite()))
}

/// `cargo xtask bench pktgen [ARGS]`: with `--dev`, pktgen on this host out of a real NIC;
/// otherwise in the VM against xlb on a veth pair. ARGS go to `vagrant/pktgen.sh`.
pub fn pktgen(args: &[String]) -> Result<()> {
    ensure_root()?;
    let dirs = Dirs::new()?;
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return check(
            Command::new("bash")
                .arg(dirs.script("pktgen.sh"))
                .arg("--help"),
        );
    }
    crate::setup::run()?;
    crate::build_xlb("release")?;
    if args.iter().any(|a| a == "--dev") {
        let mut cmd = Command::new("bash");
        cmd.arg(dirs.script("pktgen.sh"))
            .args(args)
            .arg("--xlb")
            .arg(dirs.release.join("xlb"));
        return check(&mut cmd);
    }
    let accel = match std::env::var("XLB_VM_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        _ => Accel::Auto,
    };
    // --json FILE is written in the guest and handed back on the console; --kernel is ours.
    let mut guest_args = Vec::new();
    let mut json = None;
    let mut kernels = vec![Kernel::Bookworm];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--json" {
            json = Some(PathBuf::from(it.next().context("--json needs a file")?));
            guest_args.extend(["--json".to_owned(), "/tmp/pktgen.json".to_owned()]);
        } else if a == "--kernel" {
            let list = it.next().context("--kernel needs a release")?;
            kernels = list
                .split(',')
                .map(|k| {
                    <Kernel as clap::ValueEnum>::from_str(k, true)
                        .map_err(|e| anyhow::anyhow!("--kernel {k}: {e}"))
                })
                .collect::<Result<_>>()?;
        } else {
            guest_args.push(a.clone());
        }
    }
    let qemu = host_packages(&dirs).context("vm: host packages")?;
    let mut job = String::from("#!/bin/sh\n# written by `cargo xtask bench pktgen`\n");
    let _ = writeln!(
        job,
        "timeout --kill-after=10 900 bash ./pktgen.sh --xlb ./xlb {}\nrc=$?",
        shell_words(&guest_args)
    );
    if json.is_some() {
        let _ = writeln!(
            job,
            "[ -f /tmp/pktgen.json ] && echo \"{FILE_MARKER}pktgen.json: $(cat /tmp/pktgen.json)\""
        );
    }
    job.push_str("exit $rc\n");
    let payload = payload(&dirs, &[], Some(&job)).context("vm: payload")?;
    // One kernel after the other: side by side, the guests would share the CPUs they measure.
    let mut failed = Vec::new();
    for &kernel in &kernels {
        let name = kernel.suite();
        let (image, _) = image(&dirs, kernel, false).context("vm: image")?;
        let vm = Vm {
            name,
            qemu: qemu.clone(),
            image,
            payload: payload.clone(),
            cpus: 2,
            memory: 2048,
            release: dirs.release.clone(),
            log: console_log(&dirs, kernel),
            systemd: false,
        };
        let out = boot_with_fallback(&dirs, &vm, accel, Duration::from_secs(1200))?;
        if let (Some(path), Some(text)) = (&json, out.files.get("pktgen.json")) {
            // Several kernels: one file each, `FILE` with the release before its extension.
            let path = if kernels.len() == 1 {
                path.clone()
            } else {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                let ext = path
                    .extension()
                    .map(|e| format!(".{}", e.to_string_lossy()))
                    .unwrap_or_default();
                path.with_file_name(format!("{stem}-{name}{ext}"))
            };
            fs::write(&path, format!("{text}\n"))
                .with_context(|| format!("write {}", path.display()))?;
        }
        say(&format!(
            "{name}: pktgen in the VM, kernel {} ({:?}): figures from an emulated guest only show \
             that the path works; see vagrant/README.md for a real NIC",
            out.kernel, out.accel
        ));
        if out.rc != 0 {
            failed.push(name);
        }
    }
    ensure!(
        failed.is_empty(),
        "pktgen failed in the VM on {}",
        failed.join(", ")
    );
    Ok(())
}

fn ensure_root() -> Result<()> {
    let uid = output(Command::new("id").arg("-u"))?;
    ensure!(
        uid.trim() == "0",
        "the VM tasks need root (debootstrap, apt-get, chroot): run as root"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Host packages

/// Installs debootstrap, e2fsprogs and QEMU when missing; returns the QEMU binary.
fn host_packages(dirs: &Dirs) -> Result<PathBuf> {
    let mut updated = false;
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        apt_install(&missing, &mut updated)?;
    }
    if let Some(q) = which("qemu-system-x86_64") {
        return Ok(q);
    }
    let private = dirs.work.join("host/qemu/usr/bin/qemu-system-x86_64");
    if runs(&private) {
        return Ok(private);
    }
    apt_update(&mut updated)?;
    let sim = output(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "install",
                "-s",
                "--no-install-recommends",
                "qemu-system-x86",
            ]),
    )?;
    let removes: Vec<&str> = sim
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .collect();
    if removes.is_empty() {
        apt_install(&["qemu-system-x86"], &mut updated)?;
        return which("qemu-system-x86_64").context("qemu-system-x86_64 not on PATH after install");
    }
    // Installing Debian's QEMU would remove host packages: install its libraries, unpack QEMU
    // itself under target/xlb-vm/host.
    say(&format!(
        "apt would remove {} to install qemu-system-x86: unpacking QEMU under {} instead",
        removes.join(", "),
        dirs.work.join("host").display()
    ));
    const PRIVATE: &[&str] = &["qemu-system-x86", "qemu-system-common"];
    let deps: Vec<&str> = sim
        .lines()
        .filter_map(|l| l.strip_prefix("Inst ")?.split_whitespace().next())
        .filter(|p| !PRIVATE.contains(p))
        .collect();
    if !deps.is_empty() {
        apt_install(&deps, &mut updated)?;
    }
    let debs = dirs.work.join("host/debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs)?;
    check(
        Command::new("apt-get")
            .current_dir(&debs)
            .args(["download", "-q"])
            .args(PRIVATE),
    )?;
    let root = dirs.work.join("host/qemu");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    for deb in fs::read_dir(&debs)? {
        let deb = deb?.path();
        check(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    ensure!(runs(&private), "{} does not run", private.display());
    Ok(private)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_update(updated: &mut bool) -> Result<()> {
    if !*updated {
        check(Command::new("apt-get").args(["update", "-q"]))?;
        *updated = true;
    }
    Ok(())
}

fn apt_install(pkgs: &[&str], updated: &mut bool) -> Result<()> {
    say(&format!("installing Debian packages: {}", pkgs.join(" ")));
    apt_update(updated)?;
    check(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(pkgs),
    )
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| runs(p))
    })
}

fn runs(bin: &Path) -> bool {
    bin.is_file()
        && Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// Host build

/// A test executable of xlb-tests.
struct TestBin {
    name: String,
    path: PathBuf,
}

/// Builds the integration tests of xlb-tests (release) and returns those named in `wanted`.
fn build_tests(wanted: &[String]) -> Result<Vec<TestBin>> {
    // Only the tests asked for are built, so a test target being written elsewhere in the tree
    // does not stop the others.
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "test",
        "--release",
        "--no-run",
        "--package",
        "xlb-tests",
        "--message-format=json-render-diagnostics",
    ]);
    if wanted.iter().any(|w| w == "all") {
        cmd.arg("--tests");
    } else {
        for w in wanted {
            cmd.args(["--test", w]);
        }
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("start cargo test --no-run")?;
    ensure!(out.status.success(), "cargo test --no-run failed");
    let mut all = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"")
            || !line.contains("\"kind\":[\"test\"]")
        {
            continue;
        }
        let (Some(name), Some(exe)) = (
            json_str(line, "\"target\":{", "name"),
            json_str(line, "", "executable"),
        ) else {
            continue;
        };
        all.push(TestBin {
            name,
            path: PathBuf::from(exe),
        });
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    if wanted.iter().any(|w| w == "all") {
        return Ok(all);
    }
    let mut picked = Vec::new();
    for w in wanted {
        let Some(i) = all.iter().position(|t| &t.name == w) else {
            let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
            bail!(
                "no test target {w} in xlb-tests (there are: {})",
                names.join(", ")
            );
        };
        picked.push(all.swap_remove(i));
    }
    Ok(picked)
}

/// The string value of `"key":"..."` in `line`, searched after `after` (a crude reader for
/// cargo's JSON messages: paths and target names need no unescaping but `\\` and `\"`).
fn json_str(line: &str, after: &str, key: &str) -> Option<String> {
    let start = line.find(after)? + after.len();
    let pat = format!("\"{key}\":\"");
    let from = line[start..].find(&pat)? + start + pat.len();
    let mut s = String::new();
    let mut chars = line[from..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(s),
            '\\' => s.push(chars.next()?),
            c => s.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Image

/// A built image: the root disk and the kernel and initrd from its /boot.
#[derive(Clone)]
struct Image {
    disk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// The image for `kernel`, built unless a current one is cached; with the time its build took
/// (zero when cached).
fn image(dirs: &Dirs, kernel: Kernel, rebuild: bool) -> Result<(Image, Duration)> {
    let mirror = debian_mirror();
    let provision = fs::read(dirs.script("provision.sh")).context("read vagrant/provision.sh")?;
    let init = fs::read(dirs.script("vm-init.sh")).context("read vagrant/vm-init.sh")?;
    let unit = fs::read(dirs.script(GUEST_JOB_UNIT)).context("read the guest's job unit")?;
    let suite = kernel.suite();
    let mut inputs = Vec::new();
    inputs.extend_from_slice(&provision);
    inputs.extend_from_slice(&init);
    inputs.extend_from_slice(&unit);
    inputs.extend_from_slice(
        format!(
            "\nuserland {USERLAND}\nkernel {suite}\nmirror {mirror}\nimage {IMAGE_PACKAGES:?}\n\
             runtime {DEBIAN_PACKAGES:?}\n"
        )
        .as_bytes(),
    );
    let hash = sha256(&inputs)?;
    let prefix = format!("image-{suite}-");
    let dir = dirs.work.join(format!("{prefix}{}", &hash[..16]));
    let img = Image {
        disk: dir.join("root.img"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    if !rebuild && img.disk.is_file() && img.kernel.is_file() && img.initrd.is_file() {
        say(&format!("{suite}: image {} is current", dir.display()));
        return Ok((img, Duration::ZERO));
    }
    say(&format!(
        "{suite}: building the image {} (Debian {USERLAND} from {mirror}, the kernel of {suite})",
        dir.display()
    ));
    let t = Instant::now();
    let tmp = dirs.work.join(format!("{prefix}tmp"));
    remove_tree(&tmp)?;
    fs::create_dir_all(&tmp)?;
    let rootfs = tmp.join("rootfs");
    build_rootfs(dirs, &rootfs, &mirror, kernel)?;
    let boot = |prefix: &str| -> Result<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(rootfs.join("boot"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .collect();
        found.sort();
        found
            .pop()
            .with_context(|| format!("no /boot/{prefix}* in the image"))
    };
    let vmlinuz = boot("vmlinuz-")?;
    let version = vmlinuz
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_owned();
    fs::copy(&vmlinuz, tmp.join("vmlinuz"))?;
    fs::copy(boot("initrd.img-")?, tmp.join("initrd.img"))?;
    fs::write(tmp.join("kernel-version"), format!("{version}\n"))?;
    let size_mib = du_mib(&rootfs)? * 5 / 4 + 512;
    check(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "xlb-root", "-d"])
            .arg(&rootfs)
            .arg(tmp.join("root.img"))
            .arg(format!("{size_mib}M")),
    )?;
    remove_tree(&rootfs)?;
    // Older images of this kernel go (and those from before the kernel matrix, `image-HASH`);
    // the new one takes its name last, so a half-built one is never used.
    for e in fs::read_dir(&dirs.work)? {
        let p = e?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let legacy = name
            .strip_prefix("image-")
            .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if legacy || (name.starts_with(&prefix) && p != tmp) {
            remove_tree(&p)?;
        }
    }
    fs::rename(&tmp, &dir)?;
    say(&format!(
        "{suite}: image built in {:.0} s: kernel {version}, root disk {size_mib} MiB",
        t.elapsed().as_secs_f64()
    ));
    Ok((img, t.elapsed()))
}

/// debootstrap, provisioning in a chroot, the guest's init. Mounts happen in private mount
/// namespaces (`unshare -m`), so none outlives a failure.
fn build_rootfs(dirs: &Dirs, rootfs: &Path, mirror: &str, kernel: Kernel) -> Result<()> {
    let suite = kernel.suite();
    let t = Instant::now();
    check(
        Command::new("timeout")
            .arg(BUILD_TIMEOUT_SECS.to_string())
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["debootstrap", "--variant=minbase"])
            .arg(format!("--include={}", IMAGE_PACKAGES.join(",")))
            .arg(USERLAND)
            .arg(rootfs)
            .arg(mirror),
    )
    .context("debootstrap")?;
    say(&format!(
        "{suite}: debootstrap: {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    let t = Instant::now();
    fs::copy(dirs.script("provision.sh"), rootfs.join("tmp/provision.sh"))?;
    if Path::new("/etc/resolv.conf").is_file() {
        let _ = fs::remove_file(rootfs.join("etc/resolv.conf"));
        fs::copy("/etc/resolv.conf", rootfs.join("etc/resolv.conf"))?;
    }
    // The kernel of `suite`, from that release's archive (added for this install only), on the
    // userland of USERLAND: apt takes from `suite` the kernel and what it needs that the
    // userland's versions do not satisfy.
    let sources = "/etc/apt/sources.list.d/xlb-kernel.list";
    let kernel_install = format!(
        "set -e; export DEBIAN_FRONTEND=noninteractive; \
         echo 'deb {mirror} {suite} main' >{sources}; apt-get update -q; \
         apt-get install -y -q --no-install-recommends linux-image-amd64/{suite}; \
         rm -f {sources}; apt-get clean"
    );
    let script = format!(
        "mount -t proc proc '{r}/proc' && chroot '{r}' /bin/sh /tmp/provision.sh runtime {p} \
         && chroot '{r}' /bin/sh -c \"{kernel_install}\"",
        r = rootfs.display(),
        p = DEBIAN_PACKAGES.join(" ")
    );
    check(
        Command::new("timeout")
            .arg(BUILD_TIMEOUT_SECS.to_string())
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(script),
    )
    .context("provisioning and the kernel in the image")?;
    say(&format!(
        "{suite}: provisioning and kernel: {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    fs::remove_file(rootfs.join("tmp/provision.sh"))?;
    let init = rootfs.join(GUEST_INIT.trim_start_matches('/'));
    fs::create_dir_all(init.parent().context("init path")?)?;
    fs::copy(dirs.script("vm-init.sh"), &init)?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    // Enabled the way `systemctl enable` does it: a link in the target's `.wants`.
    let units = rootfs.join("etc/systemd/system");
    fs::create_dir_all(units.join("multi-user.target.wants"))?;
    fs::copy(dirs.script(GUEST_JOB_UNIT), units.join(GUEST_JOB_UNIT))?;
    symlink(
        format!("/etc/systemd/system/{GUEST_JOB_UNIT}"),
        units.join("multi-user.target.wants").join(GUEST_JOB_UNIT),
    )?;
    fs::write(rootfs.join("etc/hostname"), "xlb-vm\n")?;
    fs::write(
        rootfs.join("etc/fstab"),
        "# xlb-vm: mounts are made by its init\n",
    )?;
    // Smaller disk: the guest never runs apt.
    for d in ["var/lib/apt/lists", "var/cache/apt"] {
        let p = rootfs.join(d);
        if p.is_dir() {
            for e in fs::read_dir(&p)? {
                let e = e?.path();
                if e.is_file() {
                    fs::remove_file(&e)?;
                }
            }
        }
    }
    Ok(())
}

/// The Debian mirror apt uses here (`XLB_VM_MIRROR` overrides it).
fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("XLB_VM_MIRROR") {
        return m;
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let debian = |uri: &str| {
        let u = uri.trim_end_matches('/');
        (u.starts_with("http://") || u.starts_with("https://")) && u.ends_with("/debian")
    };
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            // deb822 stanzas: `Types: deb`, `URIs: ...`, `Enabled: no` to skip.
            for stanza in text.split("\n\n") {
                let field = |k: &str| {
                    stanza.lines().find_map(|l| {
                        let (key, v) = l.split_once(':')?;
                        key.trim()
                            .eq_ignore_ascii_case(k)
                            .then(|| v.trim().to_owned())
                    })
                };
                if field("Enabled").is_some_and(|v| v == "no")
                    || !field("Types").is_some_and(|v| v.split_whitespace().any(|t| t == "deb"))
                {
                    continue;
                }
                if let Some(uri) = field("URIs")
                    .and_then(|v| v.split_whitespace().find(|u| debian(u)).map(str::to_owned))
                {
                    return uri;
                }
            }
        } else if name.ends_with(".list") {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if words.next() != Some("deb") {
                    continue;
                }
                // `deb [options] URI suite components`
                if let Some(uri) = words.find(|w| !w.starts_with('[') && !w.ends_with(']'))
                    && debian(uri)
                {
                    return uri.to_owned();
                }
            }
        }
    }
    DEFAULT_MIRROR.to_owned()
}

fn sha256(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start sha256sum")?;
    child
        .stdin
        .take()
        .context("sha256sum stdin")?
        .write_all(data)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "sha256sum failed");
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(s.split_whitespace().next().unwrap_or_default().to_owned())
}

fn du_mib(dir: &Path) -> Result<u64> {
    let out = output(Command::new("du").args(["-s", "-x", "-m"]).arg(dir))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du output")
}

fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", p.display()))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Payload

/// The job that runs the test binaries in the guest (from the payload's root, target/release).
fn test_job(dirs: &Dirs, tests: &[TestBin], args: &[String], timeout: u64) -> Result<String> {
    let mut job = String::from(
        "#!/bin/sh\n# written by `cargo xtask vm`: the end-to-end suite\n\
         pass=0; fail=0; failed=\"\"\n\
         # The property test's shorter run: an emulated CPU is some 20 times slower.\n\
         export XLB_PROPERTY_PACKETS=50000\n",
    );
    // One test at a time unless told otherwise: an emulated guest is slow enough that parallel
    // lab tests miss their own time limits (30 s for the agent to load, 500 ms for a reload).
    let user_args = args.len();
    let mut args = args.to_vec();
    if !args.iter().any(|a| a.starts_with("--test-threads")) {
        args.insert(0, "--test-threads=1".to_owned());
    }
    if !args.iter().any(|a| a.starts_with("--color")) {
        args.insert(0, "--color=never".to_owned());
    }
    for t in tests {
        // Under TCG, tests whose own time limits an emulated CPU cannot meet are skipped (unless
        // the run names its own filters); the job reads the accelerator from the kernel command
        // line.
        let mut skips = String::new();
        if user_args == 0 {
            for (bin, test, why) in TCG_SKIPS.iter().filter(|s| s.0 == t.name) {
                let _ = write!(skips, " --skip {test}");
                let _ = writeln!(
                    job,
                    "grep -q xlb.accel=tcg /proc/cmdline && \
                     echo \"xlb-vm: TCG: skipping {bin}::{test} ({why})\""
                );
            }
        }
        let skip_var = if skips.is_empty() {
            String::new()
        } else {
            let _ = writeln!(
                job,
                "skips=; grep -q xlb.accel=tcg /proc/cmdline && skips='{}'",
                skips.trim()
            );
            " $skips".to_owned()
        };
        let rel = t.path.strip_prefix(&dirs.release).with_context(|| {
            format!(
                "{} is not under {}",
                t.path.display(),
                dirs.release.display()
            )
        })?;
        let _ = writeln!(
            job,
            "echo \"xlb-vm: === {name}\"; s=$(date +%s)\n\
             if timeout --kill-after=10 {timeout} ./{rel} {args}{skip_var}; then pass=$((pass + 1)); \
             else fail=$((fail + 1)); failed=\"$failed {name}\"; fi\n\
             echo \"xlb-vm: {name} took $(( $(date +%s) - s )) s\"",
            name = t.name,
            rel = rel.display(),
            args = shell_words(&args),
        );
    }
    job.push_str(
        "echo \"xlb-vm: test binaries: $pass passed, $fail failed${failed:+ (failed:$failed)}\"\n\
         [ \"$fail\" = 0 ]\n",
    );
    Ok(job)
}

/// Builds the payload disk: `xlb`, `xlb-lab`, `pktgen.sh`, the test binaries and `job.sh` (none:
/// the guest gives a shell), laid out as in target/release.
fn payload(dirs: &Dirs, tests: &[TestBin], job: Option<&str>) -> Result<PathBuf> {
    let stage = dirs.work.join("payload");
    remove_tree(&stage)?;
    fs::create_dir_all(stage.join("deps"))?;
    let mut files: Vec<(PathBuf, PathBuf)> = vec![
        (dirs.release.join("xlb"), stage.join("xlb")),
        (dirs.script("pktgen.sh"), stage.join("pktgen.sh")),
    ];
    let lab = dirs.release.join("xlb-lab");
    if lab.is_file() {
        files.push((lab, stage.join("xlb-lab")));
    }
    for t in tests {
        let rel = t.path.strip_prefix(&dirs.release)?;
        files.push((t.path.clone(), stage.join(rel)));
    }
    for (from, to) in &files {
        fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    }
    disk(dirs, &stage, job, "payload.img")
}

/// The ext4 disk `name` (in target/xlb-vm) of the directory `stage`, with `job` as its `job.sh`.
fn disk(dirs: &Dirs, stage: &Path, job: Option<&str>, name: &str) -> Result<PathBuf> {
    if let Some(job) = job {
        let path = stage.join("job.sh");
        fs::write(&path, job)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    let disk = dirs.work.join(name);
    let _ = fs::remove_file(&disk);
    let size_mib = du_mib(stage)? * 5 / 4 + 64;
    check(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "xlb-payload", "-d"])
            .arg(stage)
            .arg(&disk)
            .arg(format!("{size_mib}M")),
    )?;
    Ok(disk)
}

/// `args` quoted for sh.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Boot

#[derive(Clone)]
struct Vm {
    /// The kernel's release: names the log and prefixes the console lines shown here.
    name: &'static str,
    qemu: PathBuf,
    image: Image,
    payload: PathBuf,
    cpus: u32,
    memory: u32,
    release: PathBuf,
    log: PathBuf,
    /// Boot systemd (which runs the job as a service) rather than the init script.
    systemd: bool,
}

/// What a guest run ended with.
struct Outcome {
    rc: i32,
    accel: Accel,
    /// `uname -r` in the guest.
    kernel: String,
    /// From the guest's init starting to its result line.
    run_time: Duration,
    /// What the test binaries reported.
    tests: TestCounts,
    /// Files the job handed back on the console.
    files: std::collections::BTreeMap<String, String>,
}

/// The sums of the test binaries' `test result:` lines.
#[derive(Default, Debug)]
struct TestCounts {
    binaries: u32,
    passed: u32,
    failed: u32,
    ignored: u32,
}

impl TestCounts {
    /// Adds a libtest summary: `test result: ok. 12 passed; 0 failed; 1 ignored; ...`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

enum Boot {
    Done(Outcome),
    /// The guest did not reach its init in time (or QEMU quit before): try another accelerator.
    NoBoot(String),
}

/// Kills QEMU when dropped before it exited.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Vm {
    fn new(dirs: &Dirs, qemu: PathBuf, image: Image, kernel: Kernel, args: &VmArgs) -> Vm {
        Vm {
            name: kernel.suite(),
            qemu,
            image,
            payload: dirs.work.join("payload.img"),
            cpus: args.cpus,
            memory: args.memory,
            release: dirs.release.clone(),
            log: console_log(dirs, kernel),
            systemd: false,
        }
    }

    fn command(&self, accel: Accel) -> Command {
        let mut cmd = Command::new(&self.qemu);
        // A QEMU unpacked under target/ looks for its firmware next to itself: name Debian's.
        for dir in [
            "/usr/share/qemu",
            "/usr/share/seabios",
            "/usr/lib/ipxe/qemu",
        ] {
            if Path::new(dir).is_dir() {
                cmd.arg("-L").arg(dir);
            }
        }
        cmd.args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ]);
        cmd.args(["-machine", "q35"]);
        match accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            _ => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
        };
        cmd.arg("-smp")
            .arg(self.cpus.to_string())
            .arg("-m")
            .arg(self.memory.to_string())
            .arg("-kernel")
            .arg(&self.image.kernel)
            .arg("-initrd")
            .arg(&self.image.initrd)
            .arg("-append")
            .arg(format!(
                "root=/dev/vda rw rootfstype=ext4 console=ttyS0,115200 panic=-1 quiet \
                 {} xlb.payload={} xlb.accel={}",
                if self.systemd {
                    SYSTEMD_INIT.to_owned()
                } else {
                    format!("init={GUEST_INIT}")
                },
                self.release.display(),
                if accel == Accel::Kvm { "kvm" } else { "tcg" }
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                self.image.disk.display()
            ))
            .arg("-drive")
            // A snapshot too: guests running side by side share the payload disk.
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                self.payload.display()
            ))
            // No network device at all: the guest reaches nothing outside itself.
            .args(["-nic", "none"]);
        cmd
    }

    /// Boots, streams the console here and into the log, returns the guest's result.
    fn boot(&self, accel: Accel, boot_timeout: Duration, timeout: Duration) -> Result<Boot> {
        let mut cmd = self.command(accel);
        cmd.args(["-serial", "stdio", "-monitor", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let name = self.name;
        say(&format!(
            "{name}: booting the VM ({accel:?}): {}",
            describe(&cmd)
        ));
        let mut child = cmd.spawn().context("start qemu")?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let mut stderr = child.stderr.take().context("qemu stderr")?;
        let mut guard = Guard(Some(child));
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            let mut r = std::io::BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match std::io::BufRead::read_until(&mut r, b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .replace('\r', "");
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let err_text = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut log = fs::File::create(&self.log)
            .with_context(|| format!("create {}", self.log.display()))?;
        let start = Instant::now();
        let mut booted: Option<Instant> = None;
        let mut result: Option<(i32, Duration)> = None;
        let mut result_at: Option<Instant> = None;
        let mut files = std::collections::BTreeMap::new();
        let mut tests = TestCounts::default();
        let mut kernel = String::new();
        loop {
            // Bounds: the boot from QEMU's start, the run from the boot, the power-off from the
            // result line.
            let left = match (booted, result_at) {
                (_, Some(at)) => Duration::from_secs(30).saturating_sub(at.elapsed()),
                (None, None) => boot_timeout.saturating_sub(start.elapsed()),
                (Some(b), None) => timeout.saturating_sub(b.elapsed()),
            };
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let _ = writeln!(log, "{line}");
                    if let Some(rest) = line.strip_prefix(FILE_MARKER) {
                        if let Some((name, text)) = rest.split_once(": ") {
                            files.insert(name.to_owned(), text.to_owned());
                        }
                        continue;
                    }
                    println!("[{name}] {line}");
                    tests.add(&line);
                    if booted.is_none() && line.contains(INIT_MARKER) {
                        booted = Some(Instant::now());
                        // `xlb-vm: init: kernel 6.1.0-50-amd64, 2 CPUs, ...`
                        kernel = line
                            .split("kernel ")
                            .nth(1)
                            .and_then(|r| r.split(',').next())
                            .unwrap_or_default()
                            .to_owned();
                        say(&format!(
                            "{name}: guest init after {:.1} s ({accel:?})",
                            start.elapsed().as_secs_f64()
                        ));
                    }
                    if let Some(rc) = line.trim().strip_prefix(RESULT_MARKER)
                        && result.is_none()
                    {
                        let rc = rc.trim().parse().unwrap_or(-1);
                        let ran = booted.map_or(Duration::ZERO, |b| b.elapsed());
                        result = Some((rc, ran));
                        result_at = Some(Instant::now());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if result.is_some() {
                        say(&format!(
                            "{name}: the guest did not power off within 30 s after its result: \
                             stopping QEMU"
                        ));
                        break;
                    }
                    if booted.is_none() {
                        drop(guard);
                        return Ok(Boot::NoBoot(format!(
                            "no init within {} s",
                            boot_timeout.as_secs()
                        )));
                    }
                    bail!(
                        "the VM run took longer than {} s: killed (console log: {})",
                        timeout.as_secs(),
                        self.log.display()
                    );
                }
            }
        }
        // Console closed: QEMU is exiting (or was told to).
        let mut child = guard.0.take().context("qemu child")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let err = err_text.join().unwrap_or_default();
        match (result, booted) {
            (Some((rc, run_time)), _) => Ok(Boot::Done(Outcome {
                rc,
                accel,
                kernel,
                run_time,
                tests,
                files,
            })),
            (None, None) => Ok(Boot::NoBoot(format!(
                "QEMU exited ({status:?}) before the guest's init: {}",
                err.trim()
            ))),
            (None, Some(_)) => bail!(
                "the guest stopped without a result ({status:?}); QEMU said: {}; console log: {}",
                err.trim(),
                self.log.display()
            ),
        }
    }

    /// An interactive console: the terminal is the guest's serial port.
    fn shell(&self, accel: Accel) -> Result<()> {
        let mut cmd = self.command(accel);
        cmd.args(["-serial", "mon:stdio"]);
        say(&format!(
            "console on this terminal ({accel:?}); exit the shell or press Ctrl-A X to stop"
        ));
        let st = cmd.status().context("start qemu")?;
        ensure!(st.success(), "qemu: {st}");
        Ok(())
    }
}

/// The accelerator verdict cached for this host kernel and QEMU.
fn accel_cache(dirs: &Dirs, vm: &Vm) -> (PathBuf, String) {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    (
        dirs.work.join("accel"),
        format!("{} {}", kernel.trim(), vm.qemu.display()),
    )
}

fn cached_accel(dirs: &Dirs, vm: &Vm) -> Option<Accel> {
    let (path, key) = accel_cache(dirs, vm);
    let text = fs::read_to_string(path).ok()?;
    let (accel, k) = text.trim().split_once(' ')?;
    (k == key).then_some(match accel {
        "kvm" => Accel::Kvm,
        _ => Accel::Tcg,
    })
}

fn remember_accel(dirs: &Dirs, vm: &Vm, accel: Accel) {
    let (path, key) = accel_cache(dirs, vm);
    let name = if accel == Accel::Kvm { "kvm" } else { "tcg" };
    let _ = fs::write(path, format!("{name} {key}\n"));
}

fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The accelerators to try, in order.
fn candidates(dirs: &Dirs, vm: &Vm, wanted: Accel) -> Vec<Accel> {
    match wanted {
        Accel::Kvm => vec![Accel::Kvm],
        Accel::Tcg => vec![Accel::Tcg],
        Accel::Auto if !kvm_usable() => vec![Accel::Tcg],
        Accel::Auto => match cached_accel(dirs, vm) {
            Some(Accel::Tcg) => vec![Accel::Tcg],
            _ => vec![Accel::Kvm, Accel::Tcg],
        },
    }
}

fn boot_with_fallback(dirs: &Dirs, vm: &Vm, wanted: Accel, timeout: Duration) -> Result<Outcome> {
    let list = candidates(dirs, vm, wanted);
    for (i, &accel) in list.iter().enumerate() {
        let boot_timeout = if accel == Accel::Kvm {
            KVM_BOOT_TIMEOUT
        } else {
            TCG_BOOT_TIMEOUT
        };
        match vm.boot(accel, boot_timeout, timeout)? {
            Boot::Done(out) => {
                if wanted == Accel::Auto {
                    remember_accel(dirs, vm, accel);
                }
                return Ok(out);
            }
            Boot::NoBoot(why) if i + 1 < list.len() => {
                say(&format!(
                    "{}: the guest did not boot with {accel:?} ({why}): trying TCG",
                    vm.name
                ));
            }
            Boot::NoBoot(why) => bail!(
                "the guest did not boot with {accel:?}: {why} (console log: {})",
                vm.log.display()
            ),
        }
    }
    bail!("no accelerator to boot with")
}

/// For the shell: the accelerator that boots, probing with a job that only exits.
fn pick_accel(dirs: &Dirs, vm: &Vm, wanted: Accel) -> Result<Accel> {
    let list = candidates(dirs, vm, wanted);
    if list.len() == 1 {
        return Ok(list[0]);
    }
    let mut probe = vm.clone();
    probe.payload = payload(dirs, &[], Some("#!/bin/sh\nexit 0\n"))?;
    say("probing which accelerator boots (cached afterwards)");
    let accel = boot_with_fallback(dirs, &probe, wanted, Duration::from_secs(120))?.accel;
    Ok(accel)
}

// ---------------------------------------------------------------------------------------------

fn say(msg: &str) {
    eprintln!("xtask vm: {msg}");
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("start {} (is it installed?)", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            describe(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("start {} (is it installed?)", describe(cmd)))?;
    if !st.success() {
        bail!("{} failed: {st}", describe(cmd));
    }
    Ok(())
}
