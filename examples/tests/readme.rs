//! The README's embedding example is the code of `examples/readme_oidc.rs`,
//! which the workspace compiles: the README cannot show code that does not
//! build.

#[test]
fn the_readme_shows_the_example_that_compiles() {
    let example = include_str!("../examples/readme_oidc.rs");
    // Read when the test runs, from beside the package's folder (where cargo
    // and scripts/suite.sh run it): cargo tracks a file outside the package
    // by the path of the checkout the test was built in.
    let readme = std::env::current_dir()
        .expect("the working folder")
        .join("../README.md");
    let readme = std::fs::read_to_string(&readme)
        .unwrap_or_else(|e| panic!("reading {}: {e}", readme.display()));
    let begin =
        example.find("// README:begin\n").expect("begin marker") + "// README:begin\n".len();
    let end = example.find("    // README:end").expect("end marker");
    let code: String = example[begin..end]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let section = readme
        .split("## Embedding in a Rust server")
        .nth(1)
        .expect("the README's embedding section");
    let block = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a rust block in the embedding section");
    assert_eq!(
        block, code,
        "README.md's embedding example differs from examples/examples/readme_oidc.rs"
    );
}
