//! The README's Rust blocks are what the facade's doctests compile and run; this checks that
//! they are whole programs as shown, with no rustdoc-hidden `# ` lines that a reader copying
//! them from the rendered page would not get.

#[test]
fn readme_rust_blocks_have_no_hidden_lines() {
    let readme = include_str!("../../../README.md");
    let mut in_rust = false;
    let mut blocks = 0;
    for (n, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_rust = !in_rust && line.trim_start_matches('`').starts_with("rust");
            blocks += usize::from(in_rust);
            continue;
        }
        if in_rust {
            let trimmed = line.trim_start();
            assert!(
                !(trimmed == "#" || trimmed.starts_with("# ")),
                "README.md line {}: a hidden doctest line does not show on the page: {line}",
                n + 1
            );
        }
    }
    assert!(blocks >= 2, "no Rust blocks found in the README");
}
