//! The operator documentation is checked like code.
//!
//! Every ```toml block of the docs is something weir accepts: a whole pipeline file as it stands, a
//! fragment of one merged into a known-good base pipeline, or (in the guest guide) a Cargo manifest
//! fragment checked against its workspace. Every line marked `# default` states the code's default,
//! and every `${VAR}` sits in a field weir expands. Every `weir` command line of a ```sh block names
//! a real subcommand and real flags, with values weir's command line parser accepts, and every
//! relative link leads to a file and heading. A block the test cannot check must be fenced as
//! another language (```text, ```sql, ```ini, …).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use weir::config::{ConfigError, Pipeline};
use weir_tests::{repo_root, weir_binary};

/// The documents whose examples are checked, relative to the repository root.
const DOCS: [&str; 4] = [
    "docs/configuration.md",
    "docs/operations.md",
    "README.md",
    "guest-examples/README.md",
];

/// A valid pipeline that fragments are merged into. One key per line, so merging is line by line.
const BASE: &str = r#"[pipeline]
name = "docs"

[source]
connection = "postgres://weir@127.0.0.1:5432/shop"
table_include_list = ["public\\.orders"]

[kafka]
bootstrap_servers = "127.0.0.1:9092"

[landing]
location = "lake/landing"

[bronze]
source_table = "public.orders"
component = "bronze.wasm"
table = "lake/bronze"

[silver]
component = "silver.wasm"
table = "lake/silver"
keys = ["id"]
"#;

/// A variable no environment sets: a `${…}` in a field weir expands then fails the parse, naming it.
const UNSET_VARIABLE: &str = "WEIR_DOCS_SURELY_UNSET_VARIABLE";

/// Top-level sections of a Cargo manifest: a toml block made of these is not a pipeline.
const CARGO_SECTIONS: [&str; 10] = [
    "package",
    "lib",
    "bin",
    "dependencies",
    "dev-dependencies",
    "build-dependencies",
    "features",
    "lints",
    "workspace",
    "profile",
];

// ---------------------------------------------------------------------------------------------
// The specifications

#[test]
fn every_toml_example_in_the_docs_is_a_valid_pipeline() -> Result<()> {
    let mut failures = Vec::new();
    let mut checked = 0;
    for block in toml_blocks()? {
        checked += 1;
        let outcome = match example(&block)? {
            Example::Pipeline(lines) => parse(&block, &lines, None)
                .map(drop)
                .map_err(|e| failure(&block, &lines, &e.to_string())),
            Example::CargoManifest => check_cargo_fragment(&block)
                .map_err(|e| format!("{} (a Cargo manifest fragment): {e:#}", block.at())),
        };
        if let Err(message) = outcome {
            failures.push(message);
        }
    }
    ensure!(checked > 0, "no ```toml block found in {DOCS:?}");
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn a_key_marked_default_in_the_docs_has_that_default_in_the_code() -> Result<()> {
    let mut failures = Vec::new();
    let mut marked = 0;
    for block in toml_blocks()? {
        let without: Vec<(usize, String)> = block
            .lines
            .iter()
            .filter(|(_, text)| !marked_default(text))
            .cloned()
            .collect();
        if without.len() == block.lines.len() {
            continue;
        }
        marked += block.lines.len() - without.len();
        let shorter = Block {
            lines: without,
            ..block.clone()
        };
        let (Example::Pipeline(with), Example::Pipeline(bare)) =
            (example(&block)?, example(&shorter)?)
        else {
            failures.push(format!(
                "{}: `# default` outside a pipeline example",
                block.at()
            ));
            continue;
        };
        let read = |lines: &[Src]| {
            parse(&block, lines, None)
                .map(|p| settings(&p))
                .map_err(|e| failure(&block, lines, &e.to_string()))
        };
        match (read(&with), read(&bare)) {
            (Ok(stated), Ok(defaults)) if stated == defaults => {}
            (Ok(stated), Ok(defaults)) => failures.push(format!(
                "{}: leaving out the lines marked `# default` changes the pipeline:\n{}",
                block.at(),
                differences(&stated, &defaults)
            )),
            (Err(e), _) | (_, Err(e)) => failures.push(e),
        }
    }
    ensure!(marked > 0, "no line marked `# default` in {DOCS:?}");
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn every_environment_variable_in_the_examples_is_in_a_field_weir_expands() -> Result<()> {
    let mut failures = Vec::new();
    for block in toml_blocks()? {
        let Example::Pipeline(lines) = example(&block)? else {
            continue;
        };
        let text = joined(&lines);
        for (i, (range, name)) in variables(&text).into_iter().enumerate() {
            // Named after a variable no environment has, this one alone must fail the parse.
            let expanded = match parse(&block, &lines, Some(i)) {
                Err(e) => e.to_string().contains(UNSET_VARIABLE),
                Ok(_) => false,
            };
            if !expanded {
                let line = text[..range.start].matches('\n').count();
                let at = lines
                    .get(line)
                    .and_then(|l| l.from)
                    .map_or_else(|| block.at(), |n| format!("{}:{n}", block.doc));
                failures.push(format!(
                    "{at}: `${{{name}}}` is in a field weir does not expand: the pipeline would \
                     hold the text `${{{name}}}` itself"
                ));
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn every_weir_command_in_the_docs_names_a_real_subcommand_and_flags() -> Result<()> {
    let weir = weir_binary()?;
    let mut helps = Helps::default();
    let mut failures = Vec::new();
    let mut checked = 0;
    for doc in DOCS {
        for block in blocks(doc)? {
            if !["sh", "bash", "shell", "console"].contains(&block.lang.as_str()) {
                continue;
            }
            for command in weir_commands(&block)? {
                checked += 1;
                if let Err(e) = check_command(&weir, &mut helps, &command.args) {
                    failures.push(format!(
                        "{}: `weir {}`: {e:#}",
                        command.at,
                        command.args.join(" ")
                    ));
                }
            }
        }
    }
    ensure!(
        checked > 0,
        "no `weir` command in the ```sh blocks of {DOCS:?}"
    );
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn every_link_in_the_docs_leads_to_a_file_and_heading() -> Result<()> {
    let mut failures = Vec::new();
    for doc in DOCS {
        let path = repo_root().join(doc);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            for target in line.split("](").skip(1).filter_map(|t| t.split_once(')')) {
                let target = target.0;
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let linked = match file {
                    "" => path.clone(),
                    file => path.with_file_name(file),
                };
                if !linked.exists() {
                    failures.push(format!("{doc}:{}: `{target}`: no such file", n + 1));
                    continue;
                }
                if anchor.is_empty() {
                    continue;
                }
                let headings = std::fs::read_to_string(&linked)
                    .map(|t| {
                        t.lines()
                            .filter_map(heading_anchor)
                            .collect::<BTreeSet<_>>()
                    })
                    .unwrap_or_default();
                if !headings.contains(anchor) {
                    failures.push(format!("{doc}:{}: `{target}`: no such heading", n + 1));
                }
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn the_base_pipeline_that_fragments_are_merged_into_is_valid() -> Result<()> {
    Pipeline::parse(&repo_root().join("docs/base.toml"), BASE.to_owned())?;
    Ok(())
}

#[test]
fn the_operator_guides_hold_examples_of_each_kind() -> Result<()> {
    for doc in ["docs/configuration.md", "docs/operations.md"] {
        let blocks = blocks(doc)?;
        ensure!(
            blocks.iter().any(|b| b.lang == "toml"),
            "{doc} has no ```toml block"
        );
    }
    let shell = blocks("docs/operations.md")?
        .into_iter()
        .filter(|b| b.lang == "sh")
        .map(|b| weir_commands(&b).map(|c| c.len()))
        .sum::<Result<usize>>()?;
    ensure!(
        shell > 0,
        "docs/operations.md has no `weir` command in a ```sh block"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fenced blocks

/// A fenced code block of a document.
#[derive(Clone)]
struct Block {
    doc: &'static str,
    /// The line of the opening fence (1-based).
    line: usize,
    /// The first word of the fence's info string (`toml`, `sh`, …).
    lang: String,
    /// The block's lines, without the fence's indentation, each with its line in the document.
    lines: Vec<(usize, String)>,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.doc, self.line)
    }
}

/// The fenced code blocks of `doc`, in order.
fn blocks(doc: &'static str) -> Result<Vec<Block>> {
    let path = repo_root().join(doc);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut open: Option<(Block, usize)> = None;
    for (i, raw) in text.lines().enumerate() {
        let body = raw.trim_start();
        let indent = raw.len() - body.len();
        match open.take() {
            None => {
                if let Some(info) = body.strip_prefix("```") {
                    let lang = info
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let block = Block {
                        doc,
                        line: i + 1,
                        lang,
                        lines: Vec::new(),
                    };
                    open = Some((block, indent));
                }
            }
            Some((block, _)) if body.trim_end() == "```" => out.push(block),
            Some((mut block, fence_indent)) => {
                // Blocks inside list items are indented; their lines lose the fence's indentation.
                let spaces = raw.len() - raw.trim_start_matches(' ').len();
                block
                    .lines
                    .push((i + 1, raw[spaces.min(fence_indent)..].to_owned()));
                open = Some((block, fence_indent));
            }
        }
    }
    if let Some((block, _)) = open {
        bail!("{}: this ``` block is never closed", block.at());
    }
    Ok(out)
}

fn toml_blocks() -> Result<Vec<Block>> {
    let mut out = Vec::new();
    for doc in DOCS {
        out.extend(blocks(doc)?.into_iter().filter(|b| b.lang == "toml"));
    }
    Ok(out)
}

/// The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as `-`.
fn heading_anchor(line: &str) -> Option<String> {
    let title = line
        .strip_prefix('#')?
        .trim_start_matches('#')
        .strip_prefix(' ')?;
    Some(
        title
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// TOML examples

/// A line of a TOML text, and the document line it comes from (`None`: the base pipeline).
#[derive(Clone, Debug)]
struct Src {
    from: Option<usize>,
    text: String,
}

/// What a toml block is checked as.
enum Example {
    /// The text to parse: the block itself if it is a whole pipeline, or the block merged into the
    /// base pipeline.
    Pipeline(Vec<Src>),
    CargoManifest,
}

fn example(block: &Block) -> Result<Example> {
    let lines: Vec<Src> = block
        .lines
        .iter()
        .map(|(n, text)| Src {
            from: Some(*n),
            text: text.clone(),
        })
        .collect();
    let names: Vec<String> = sections(&lines)
        .into_iter()
        .filter_map(|s| s.name)
        .collect();
    let cargo =
        |name: &String| CARGO_SECTIONS.contains(&name.split('.').next().unwrap_or_default());
    if !names.is_empty() && names.iter().all(cargo) {
        return Ok(Example::CargoManifest);
    }
    if names.iter().any(|n| n == "pipeline") {
        Ok(Example::Pipeline(lines))
    } else {
        Ok(Example::Pipeline(
            merged_into_base(&lines).with_context(|| block.at())?,
        ))
    }
}

/// A `[table]` or `[[array of tables]]` of a TOML text, with the lines up to the next one.
struct Section {
    head: Option<Src>,
    name: Option<String>,
    array: bool,
    lines: Vec<Src>,
}

/// The table name and whether it is an array of tables, if `line` is a table header.
fn header(line: &str) -> Option<(String, bool)> {
    let line = line.trim();
    let (inside, array) = match line.strip_prefix("[[") {
        Some(rest) => (rest.split_once("]]")?, true),
        None => (line.strip_prefix('[')?.split_once(']')?, false),
    };
    let (name, after) = inside;
    let after = after.trim();
    let name = name.trim();
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    (is_name && (after.is_empty() || after.starts_with('#'))).then(|| (name.to_owned(), array))
}

fn sections(lines: &[Src]) -> Vec<Section> {
    let mut out = vec![Section {
        head: None,
        name: None,
        array: false,
        lines: Vec::new(),
    }];
    for line in lines {
        match header(&line.text) {
            Some((name, array)) => out.push(Section {
                head: Some(line.clone()),
                name: Some(name),
                array,
                lines: Vec::new(),
            }),
            None => {
                if let Some(last) = out.last_mut() {
                    last.lines.push(line.clone());
                }
            }
        }
    }
    out
}

/// The part of a line before its comment.
fn code(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

/// The key a line sets, if it is a `key = value` line.
fn key_of(line: &str) -> Option<String> {
    let (key, _) = code(line).split_once('=')?;
    let key = key.trim();
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.\" ".contains(c));
    is_key.then(|| key.to_owned())
}

/// The value a `key = value` line sets, without its comment.
fn value_of(line: &str) -> Option<&str> {
    code(line).split_once('=').map(|(_, v)| v.trim())
}

/// Whether a `key = value` line's comment says the value is the default.
fn marked_default(line: &str) -> bool {
    let comment = &line[code(line).len()..];
    key_of(line).is_some()
        && comment
            .trim_start_matches('#')
            .trim_start()
            .starts_with("default")
}

/// A fragment merged into [`BASE`]: the fragment's sections first, in its order (a section the base
/// has too keeps the base's keys the fragment does not set), then the base's other sections.
fn merged_into_base(fragment: &[Src]) -> Result<Vec<Src>> {
    let base_lines: Vec<Src> = BASE
        .lines()
        .map(|text| Src {
            from: None,
            text: text.to_owned(),
        })
        .collect();
    let base = sections(&base_lines);
    let mut merged_names = BTreeSet::new();
    let mut out = Vec::new();
    for section in sections(fragment) {
        let (Some(head), Some(name)) = (&section.head, &section.name) else {
            if let Some(stray) = section.lines.iter().find(|l| key_of(&l.text).is_some()) {
                bail!(
                    "line {}: a key outside any [section] cannot be placed in a pipeline",
                    stray.from.unwrap_or_default()
                );
            }
            out.extend(section.lines);
            continue;
        };
        out.push(head.clone());
        out.extend(section.lines.iter().cloned());
        let from_base = base
            .iter()
            .find(|b| !section.array && !b.array && b.name.as_ref() == Some(name));
        if let Some(base_section) = from_base {
            let set: BTreeSet<String> = section
                .lines
                .iter()
                .filter_map(|l| key_of(&l.text))
                .collect();
            out.extend(
                base_section
                    .lines
                    .iter()
                    .filter(|l| key_of(&l.text).is_some_and(|k| !set.contains(&k)))
                    .cloned(),
            );
            merged_names.insert(name.clone());
        }
    }
    for section in base {
        let (Some(head), Some(name)) = (section.head, section.name) else {
            continue;
        };
        if !merged_names.contains(&name) {
            out.push(head);
            out.extend(section.lines);
        }
    }
    Ok(out)
}

fn joined(lines: &[Src]) -> String {
    lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each `${NAME}` of `text`, with its byte range.
fn variables(text: &str) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = text[from..].find("${").map(|i| from + i) {
        let Some(length) = text[start + 2..].find('}') else {
            break;
        };
        let end = start + 2 + length + 1;
        out.push((start..end, text[start + 2..end - 1].to_owned()));
        from = end;
    }
    out
}

/// Parses `lines` as a pipeline file beside the block's document. Every `${NAME}` is given a value
/// (the name in lower case), except the `unset`-th, which is renamed to [`UNSET_VARIABLE`].
fn parse(block: &Block, lines: &[Src], unset: Option<usize>) -> Result<Pipeline, ConfigError> {
    let text = joined(lines);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (i, (range, name)) in variables(&text).into_iter().enumerate() {
        out.push_str(&text[copied..range.start]);
        if unset == Some(i) {
            out.push_str(&format!("${{{UNSET_VARIABLE}}}"));
        } else {
            out.push_str(&name.to_ascii_lowercase());
        }
        copied = range.end;
    }
    out.push_str(&text[copied..]);
    Pipeline::parse(&example_path(block), out)
}

/// Where an example is taken to be, for its relative paths and its errors.
fn example_path(block: &Block) -> PathBuf {
    repo_root()
        .join(block.doc)
        .with_file_name(format!("example-at-line-{}.toml", block.line))
}

/// A failure to parse, with the text that was parsed and where each of its lines comes from.
fn failure(block: &Block, lines: &[Src], error: &str) -> String {
    let listing: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let from = l
                .from
                .map_or_else(|| "base".to_owned(), |n| format!("line {n}"));
            format!("{:>4} {from:>10} | {}", i + 1, l.text)
        })
        .collect();
    format!(
        "{}: {error}\nparsed as (line, document line | text):\n{}",
        block.at(),
        listing.join("\n")
    )
}

/// Everything a pipeline file sets, for comparing two files.
fn settings(p: &Pipeline) -> String {
    format!(
        "{:#?}",
        (
            &p.name,
            &p.source,
            &p.kafka,
            &p.landing,
            &p.bronze,
            &p.silver,
            &p.gold,
            &p.wasm,
            &p.maintenance,
            &p.metrics,
            &p.state_location,
            &p.dead_letter_location,
        )
    )
}

fn differences(with: &str, without: &str) -> String {
    let (a, b): (BTreeSet<&str>, BTreeSet<&str>) =
        (with.lines().collect(), without.lines().collect());
    let stated = a.difference(&b).map(|l| format!("  stated:  {}", l.trim()));
    let code = b.difference(&a).map(|l| format!("  default: {}", l.trim()));
    stated.chain(code).collect::<Vec<_>>().join("\n")
}

/// Checks a Cargo manifest fragment against the workspace of the document's folder: every
/// `name.workspace = true` dependency is one the workspace declares, and `crate-type` names real
/// crate types.
fn check_cargo_fragment(block: &Block) -> Result<()> {
    const CRATE_TYPES: [&str; 6] = ["lib", "rlib", "dylib", "cdylib", "staticlib", "proc-macro"];
    let manifest = workspace_manifest(block.doc)?;
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let workspace_lines: Vec<Src> = text
        .lines()
        .map(|t| Src {
            from: None,
            text: t.to_owned(),
        })
        .collect();
    let declared: BTreeSet<String> = sections(&workspace_lines)
        .into_iter()
        .filter(|s| s.name.as_deref() == Some("workspace.dependencies"))
        .flat_map(|s| s.lines)
        .filter_map(|l| key_of(&l.text))
        .map(|k| k.split('.').next().unwrap_or_default().trim().to_owned())
        .collect();
    let lines: Vec<Src> = block
        .lines
        .iter()
        .map(|(n, text)| Src {
            from: Some(*n),
            text: text.clone(),
        })
        .collect();
    for section in sections(&lines) {
        let name = section.name.unwrap_or_default();
        for line in &section.lines {
            let (Some(key), Some(value)) = (key_of(&line.text), value_of(&line.text)) else {
                continue;
            };
            let at = line.from.unwrap_or_default();
            if name.ends_with("dependencies") {
                let from_workspace = (key.ends_with(".workspace") && value == "true")
                    || value.replace(' ', "").contains("workspace=true");
                let dependency = key.split('.').next().unwrap_or_default().trim();
                ensure!(
                    !from_workspace || declared.contains(dependency),
                    "line {at}: `{dependency}` is not in [workspace.dependencies] of {}",
                    manifest.display()
                );
            }
            if name == "lib" && key == "crate-type" {
                for crate_type in value.split('"').skip(1).step_by(2) {
                    ensure!(
                        CRATE_TYPES.contains(&crate_type),
                        "line {at}: `{crate_type}` is not a crate type"
                    );
                }
            }
        }
    }
    Ok(())
}

/// The nearest `Cargo.toml` with a `[workspace]` at or above the document's folder.
fn workspace_manifest(doc: &str) -> Result<PathBuf> {
    let root = repo_root();
    let mut folder = root.join(doc);
    while folder.pop() && folder.starts_with(&root) {
        let manifest = folder.join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest)
            && text.lines().any(|l| l.trim() == "[workspace]")
        {
            return Ok(manifest);
        }
    }
    bail!("no Cargo workspace above {doc}")
}

// ---------------------------------------------------------------------------------------------
// `weir` command lines

/// A `weir` command line of a shell block: the arguments after `weir`, and where it is.
struct WeirCommand {
    at: String,
    args: Vec<String>,
}

/// Words a command may start with before the program it runs.
const WRAPPERS: [&str; 6] = ["sudo", "exec", "nohup", "env", "time", "command"];

/// The `weir …` commands of a shell block (`weir`, `target/debug/weir`, `/usr/local/bin/weir`, …).
fn weir_commands(block: &Block) -> Result<Vec<WeirCommand>> {
    // Lines ending in `\` continue on the next.
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, line) in &block.lines {
        let (start, mut text) = pending.take().unwrap_or((*n, String::new()));
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push(' ');
                pending = Some((start, text));
            }
            None => {
                text.push_str(line);
                logical.push((start, text));
            }
        }
    }
    logical.extend(pending);
    let mut out = Vec::new();
    for (n, line) in logical {
        let at = format!("{}:{n}", block.doc);
        for words in shell_commands(&line).with_context(|| at.clone())? {
            let mut words = words
                .into_iter()
                .skip_while(|w| is_assignment(w) || WRAPPERS.contains(&w.as_str()));
            let Some(program) = words.next() else {
                continue;
            };
            if Path::new(&program).file_name() == Some(std::ffi::OsStr::new("weir")) {
                out.push(WeirCommand {
                    at: at.clone(),
                    args: without_redirections(words.collect()),
                });
            }
        }
    }
    Ok(out)
}

/// `NAME=value`, as in `WEIR_LOG=debug weir run …`.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn without_redirections(words: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let operator = word.trim_start_matches(|c: char| c.is_ascii_digit());
        if operator.starts_with(['<', '>']) {
            if operator.trim_start_matches(['<', '>', '&']).is_empty() {
                words.next();
            }
            continue;
        }
        out.push(word);
    }
    out
}

/// The words of each command of a shell line, quotes removed; `;`, `&` and `|` separate commands
/// and `#` starts a comment.
fn shell_commands(line: &str) -> Result<Vec<Vec<String>>> {
    let mut commands: Vec<Vec<String>> = vec![Vec::new()];
    let mut word: Option<String> = None;
    let finish = |word: &mut Option<String>, commands: &mut Vec<Vec<String>>| {
        if let (Some(w), Some(command)) = (word.take(), commands.last_mut()) {
            command.push(w);
        }
    };
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => w.push(x),
                        None => bail!("unclosed ' in `{line}`"),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => w.push(x),
                            Some(x) => {
                                w.push('\\');
                                w.push(x);
                            }
                            None => bail!("unclosed \" in `{line}`"),
                        },
                        Some(x) => w.push(x),
                        None => bail!("unclosed \" in `{line}`"),
                    }
                }
            }
            '\\' => {
                if let Some(x) = chars.next() {
                    word.get_or_insert_with(String::new).push(x);
                }
            }
            '#' if word.is_none() => break,
            ';' | '&' | '|' => {
                finish(&mut word, &mut commands);
                if commands.last().is_some_and(|c| !c.is_empty()) {
                    commands.push(Vec::new());
                }
            }
            c if c.is_whitespace() => finish(&mut word, &mut commands),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    finish(&mut word, &mut commands);
    Ok(commands.into_iter().filter(|c| !c.is_empty()).collect())
}

/// What `weir … --help` says: the text, its flags (with whether they take a value) and, at the top
/// level, the subcommands.
struct Help {
    text: String,
    flags: BTreeMap<String, bool>,
    commands: BTreeSet<String>,
}

#[derive(Default)]
struct Helps(BTreeMap<Vec<String>, Help>);

impl Helps {
    fn of(&mut self, weir: &Path, args: &[&str]) -> Result<&Help> {
        let key: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if !self.0.contains_key(&key) {
            let output = run(weir, &[args, &["--help"]].concat())?;
            ensure!(
                output.status.success(),
                "`weir {} --help` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let help = Help {
                flags: help_flags(&text),
                commands: help_commands(&text),
                text,
            };
            self.0.insert(key.clone(), help);
        }
        self.0.get(&key).context("help text just stored is missing")
    }
}

fn run(weir: &Path, args: &[&str]) -> Result<std::process::Output> {
    Command::new(weir)
        .args(args)
        .env("WEIR_LOG", "warn")
        .output()
        .with_context(|| format!("running {} {}", weir.display(), args.join(" ")))
}

/// The flags a clap help text lists (`-h, --help`, `--stages <STAGES>`), with whether they take a
/// value.
fn help_flags(text: &str) -> BTreeMap<String, bool> {
    let mut flags = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| l.starts_with('-')) {
        let words: Vec<&str> = line
            .split_whitespace()
            .take_while(|w| w.starts_with('-') || w.starts_with('<'))
            .collect();
        let takes_value = words.iter().any(|w| w.starts_with('<'));
        for flag in words.iter().filter(|w| w.starts_with('-')) {
            flags.insert(flag.trim_end_matches(',').to_owned(), takes_value);
        }
    }
    flags
}

/// The subcommands a clap help text lists under `Commands:`.
fn help_commands(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Checks one documented command line: its subcommand and flags are in weir's help texts, and
/// weir's parser accepts the whole line (run with `--help` appended, so nothing runs).
fn check_command(weir: &Path, helps: &mut Helps, args: &[String]) -> Result<()> {
    let top = helps.of(weir, &[])?;
    let mut subcommand = None;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if !arg.starts_with('-') {
            subcommand = Some(i);
            break;
        }
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, _)) => (flag, true),
            None => (arg.as_str(), false),
        };
        let Some(takes_value) = top.flags.get(flag) else {
            bail!("`{flag}` is not an option of `weir` (see `weir --help`)");
        };
        i += if *takes_value && !inline_value { 2 } else { 1 };
    }
    if let Some(at) = subcommand {
        let name = args[at].as_str();
        ensure!(
            top.commands.contains(name),
            "`{name}` is not a subcommand of weir; they are {:?}",
            top.commands
        );
        let help = helps.of(weir, &[name])?;
        for arg in &args[at + 1..] {
            if !arg.starts_with('-') || arg == "-" {
                continue;
            }
            let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
            ensure!(
                help.flags.contains_key(flag),
                "`{flag}` is not in `weir {name} --help`:\n{}",
                help.text
            );
        }
    }
    let mut line: Vec<&str> = args.iter().map(String::as_str).collect();
    line.push("--help");
    let output = run(weir, &line)?;
    ensure!(
        output.status.success(),
        "weir's command line parser refuses it:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
