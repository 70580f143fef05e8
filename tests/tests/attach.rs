//! `xlb attach` loads only the program it attaches, so a target whose kernel refuses the balancer
//! (Linux 5.10 does) still runs the decap program. Seen from outside: the `bpf` system calls
//! the real `xlb` makes, under strace. Needs root and strace (installed by `cargo xtask setup`).

use std::{fs, process::Command};

use xlb_tests::{
    agent::xlb_bin,
    lab::{IFACE, Lab, LabSpec, Role, netns_command, ns_name, pin_dir, run_dir},
};

/// The XDP programs whose loads `strace` saw (`prog_name="..."` in `BPF_PROG_LOAD`).
fn programs_loaded(trace: &str) -> Vec<String> {
    let mut names: Vec<String> = trace
        .lines()
        .filter(|l| l.contains("BPF_PROG_LOAD"))
        .filter_map(|l| {
            let at = l.find("prog_name=\"")? + "prog_name=\"".len();
            Some(l[at..].split('"').next()?.to_owned())
        })
        .filter(|n| n.starts_with("xlb"))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn attach_loads_only_the_program_it_attaches() {
    let prefix = "xt-attach-";
    let lab = Lab::up(LabSpec {
        prefix: prefix.to_owned(),
        backends: 1,
        server_bin: env!("CARGO_BIN_EXE_xlb-lab").into(),
        xlb: None,
    })
    .expect("lab up");
    let xlb = xlb_bin().expect("the xlb binary");
    let pins = pin_dir(prefix);
    fs::create_dir_all(&pins).unwrap();
    let traces = run_dir(prefix);
    for (role, iface, program) in [
        (Role::Backend(1), IFACE, "decap"),
        (Role::Router, "lb", "pass"),
    ] {
        let trace = traces.join(format!("{program}.strace"));
        let pin = pins.join(program);
        let ns = ns_name(prefix, role);
        let mut cmd = netns_command(&ns, &["strace"]);
        cmd.args(["-f", "-e", "trace=bpf", "-s", "64", "-o"])
            .arg(&trace)
            .arg(&xlb)
            .args(["attach", "--program", program, "--iface", iface, "--pin"])
            .arg(&pin);
        let out = cmd.output().expect("run strace");
        assert!(
            out.status.success(),
            "xlb attach --program {program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = fs::read_to_string(&trace).expect("the trace");
        assert_eq!(
            programs_loaded(&text),
            [format!("xlb_{program}")],
            "programs loaded by `xlb attach --program {program}`"
        );
        // And it is attached: the interface runs an XDP program.
        let link = Command::new("ip")
            .args(["-n", &ns, "-d", "link", "show", iface])
            .output()
            .expect("ip link");
        assert!(
            String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
            "{iface} in {ns} has no XDP program"
        );
    }
    drop(lab);
}

#[test]
fn strace_lines_are_read_for_program_names() {
    let trace = "123 bpf(BPF_PROG_LOAD, {prog_type=BPF_PROG_TYPE_XDP, insn_cnt=12, prog_name=\"xlb_pass\", prog_ifindex=0}, 148) = 5\n\
                 123 bpf(BPF_PROG_LOAD, {prog_type=BPF_PROG_TYPE_SOCKET_FILTER, prog_name=\"aya_probe\"}, 148) = 6\n\
                 123 bpf(BPF_MAP_CREATE, {map_name=\"xlb_other\"}, 72) = 7\n";
    assert_eq!(programs_loaded(trace), ["xlb_pass"]);
}
