//! What `xlb` says about itself for shells and `man`: completion scripts and man pages generated
//! from its command-line definitions, checked by the programs that read them (bash, groff).

use std::process::Command;

use xlb_tests::agent::xlb_bin;

fn xlb(args: &[&str]) -> std::process::Output {
    let out = Command::new(xlb_bin().expect("xlb binary"))
        .args(args)
        .output()
        .expect("run xlb");
    assert!(out.status.success(), "xlb {args:?}: {out:?}");
    out
}

#[test]
fn bash_completes_xlbs_commands_and_options() {
    let script = String::from_utf8(xlb(&["completions", "bash"]).stdout).expect("utf-8");
    // Loaded by bash as a completion script is: the words it offers after `xlb ` and after
    // `xlb targets register --`.
    let dir = std::env::temp_dir().join(format!("xlb-completions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("xlb.bash");
    std::fs::write(&path, &script).expect("write script");
    let offered = |line: &str| {
        // As bash calls it: the words, the index of the one completed, and as arguments the
        // command, that word and the one before it.
        let words: Vec<&str> = line.split(' ').collect();
        let n = words.len();
        let probe = format!(
            "source {}; COMP_WORDS=({line}); COMP_CWORD={}; _xlb xlb {} {}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display(),
            n - 1,
            words[n - 1],
            words[n - 2],
        );
        let out = Command::new("bash")
            .args(["-c", &probe])
            .output()
            .expect("run bash");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let commands = offered("xlb ''");
    for c in ["run", "check", "targets", "reload", "completions", "man"] {
        assert!(
            commands.lines().any(|l| l == c),
            "{c} not offered:\n{commands}"
        );
    }
    let options = offered("xlb targets register --");
    for o in ["--target-group", "--id", "--config"] {
        assert!(
            options.lines().any(|l| l == o),
            "{o} not offered:\n{options}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn man_pages_cover_every_command_and_groff_reads_them_cleanly() {
    let dir = std::env::temp_dir().join(format!("xlb-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    xlb(&["man", "--dir", dir.to_str().expect("utf-8 path")]);
    for page in [
        "xlb.1",
        "xlb-run.1",
        "xlb-check.1",
        "xlb-targets-register.1",
        "xlb-stop.1",
    ] {
        let path = dir.join(page);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}:\n{text}"
        );
        // groff with warnings on: a page it cannot typeset cleanly says so on stderr.
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("run groff");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let register = std::fs::read_to_string(dir.join("xlb-targets-register.1")).expect("page");
    assert!(register.contains("target\\-group"), "{register}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_command_piped_into_head_ends_quietly() {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/examples/nlb-tunnel.toml"
    );
    // The reader is gone before xlb writes: its first line meets a closed pipe.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{{ sleep 0.3; {} check --config {config}; }} | true",
            xlb_bin().expect("xlb binary").display()
        ))
        .output()
        .expect("run sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

#[test]
fn output_json_makes_check_print_json() {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/examples/nlb-tunnel.toml"
    );
    let out = xlb(&["--output", "json", "check", "--config", config]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["listeners"], 3, "{v}");
    assert!(
        v["map_bytes"]["FLOWS"].as_u64().is_some_and(|b| b > 0),
        "{v}"
    );
}
