//! The configs xlb ships, as an operator meets them: each example under `config/examples/`,
//! `config/demo.toml` and the Debian package's `/etc/xlb/xlb.toml` pass the real `xlb check`,
//! and every ```toml block of the README and of `docs/` parses, so that one copied into a file
//! is no parse error.
//!
//! A block is a whole config unless its fence says ```` ```toml fragment ````: a config's body
//! without its `[node]`, which the test adds before parsing (docs/testing.md).

use std::path::{Path, PathBuf};

use xlb_tests::agent::xlb_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// What `xlb check` says of `config`, run from `/`: relative certificate paths must be found
/// beside the file, not in the working directory.
fn xlb_check(config: &Path) -> (bool, String) {
    let out = std::process::Command::new(xlb_bin().expect("xlb binary"))
        .current_dir("/")
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run xlb check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_example_config_and_the_demos_pass_xlb_check_as_shipped() {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(repo().join("config/examples"))
        .expect("config/examples")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    // Tunnel, DSR, ALB, both, health checks and zones.
    assert!(configs.len() >= 5, "examples: {configs:?}");
    configs.push(repo().join("config/demo.toml"));
    // The Debian package's /etc/xlb/xlb.toml.
    configs.push(repo().join("lb-userspace/debian/xlb.toml"));
    for config in &configs {
        let (ok, text) = xlb_check(config);
        assert!(
            ok && text.contains(": ok ("),
            "xlb check --config {}:\n{text}",
            config.display()
        );
    }
}

#[test]
fn an_example_whose_certificate_is_missing_is_refused_naming_its_line() {
    // Copied without its certs/: the relative paths are looked for beside the copy, not in
    // the repository or the working directory.
    let dir = std::env::temp_dir().join(format!("xlb-shipped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alb = std::fs::read_to_string(repo().join("config/examples/alb.toml")).unwrap();
    let config = dir.join("alb.toml");
    std::fs::write(&config, &alb).unwrap();
    let (ok, text) = xlb_check(&config);
    std::fs::remove_dir_all(&dir).unwrap();
    let line = alb
        .lines()
        .position(|l| l.starts_with("certificates = "))
        .expect("a certificates line")
        + 1;
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("line {line}: http_listeners[0].certificates[0]"))
            && text.contains("certs/example.com.pem"),
        "{text}"
    );
}

/// A ```toml block of a Markdown file: where it starts, whether it is a fragment, its text.
struct TomlBlock {
    file: String,
    line: usize,
    fragment: bool,
    text: String,
}

/// Every ```toml block of `text`, in order.
fn toml_blocks(file: &str, text: &str) -> Vec<TomlBlock> {
    let mut blocks = Vec::new();
    // Inside a code block: `Some(None)` for another language's.
    let mut inside: Option<Option<TomlBlock>> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut inside, fence) {
            (Some(_), Some(_)) => blocks.extend(inside.take().flatten()),
            (Some(Some(block)), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, Some(info)) => {
                let mut words = info.split_whitespace();
                inside = Some((words.next() == Some("toml")).then(|| TomlBlock {
                    file: file.to_owned(),
                    line: i + 1,
                    fragment: words.any(|w| w == "fragment"),
                    text: String::new(),
                }));
            }
            (Some(None), None) | (None, None) => {}
        }
    }
    assert!(inside.is_none(), "{file}: a code block is not closed");
    blocks
}

#[test]
fn every_toml_block_in_the_readme_and_docs_is_a_valid_config_or_fragment() {
    let mut files = vec![repo().join("README.md")];
    files.extend(
        std::fs::read_dir(repo().join("docs"))
            .expect("docs/")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    files.sort();
    let mut blocks = Vec::new();
    for path in &files {
        let name = path.strip_prefix(repo()).unwrap().display().to_string();
        blocks.extend(toml_blocks(&name, &std::fs::read_to_string(path).unwrap()));
    }
    // The README's minimal config and the configuration reference's two at least.
    assert!(blocks.len() >= 3, "{} toml blocks", blocks.len());
    for b in &blocks {
        let at = format!("{}:{}", b.file, b.line);
        // TOML errors and refused values alike: the message names the line and the key.
        let text = if b.fragment {
            assert!(
                !b.text.contains("[node]"),
                "{at}: a fragment leaves [node] out"
            );
            format!("[node]\ninterface = \"eth0\"\n\n{}", b.text)
        } else {
            b.text.clone()
        };
        if let Err(e) = lb_config::Config::parse(&text, &at) {
            panic!("{at}: not a valid config: {e}\n{text}");
        }
    }
}

#[test]
fn toml_blocks_are_found_with_their_lines_and_fragment_marks() {
    let md = "text\n```toml\na = 1\n```\n```sh\nx = [\n```\n  ```toml fragment\nb = 2\n  ```\n";
    let blocks = toml_blocks("x.md", md);
    let found: Vec<(usize, bool, &str)> = blocks
        .iter()
        .map(|b| (b.line, b.fragment, b.text.as_str()))
        .collect();
    assert_eq!(found, [(2, false, "a = 1\n"), (8, true, "b = 2\n")]);
}
