//! `weir-bench report`: runs every benchmark, each in a process of its own, and writes their
//! printed figures to `BENCHMARKS.md` with the machine, the versions and the commands.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Each benchmark, and what it measures against what.
const BENCHMARKS: [(&str, &str); 5] = [
    (
        "capture",
        "Capture next to `pg_recvlogical` on the same WAL, the snapshot next to `COPY … TO STDOUT`, landing next to a consumer that only reads the topic, then one pass of the layers over the landed changes.",
    ),
    (
        "snapshot",
        "The initial snapshot of generated tables the full data set's size and ten million rows: rows/s and peak RSS.",
    ),
    (
        "freshness",
        "Commit in PostgreSQL to row visible in silver, with `weir run` (all stages, one process) and a workload at rising rates.",
    ),
    (
        "transforms",
        "The bronze component in the Wasm sandbox next to the same Rust function called natively.",
    ),
    (
        "merge",
        "Silver's APPLY CHANGES next to one plain `deltalake` MERGE of the same changes.",
    ),
];

/// Runs the benchmarks named in `only` (all when empty) and writes `BENCHMARKS.md`, keeping the
/// other sections as an earlier report wrote them; each section says the commit it was run at.
pub fn run(only: &[String]) -> Result<()> {
    let me = std::env::current_exe()?;
    let root = weir_tests::repo_root();
    let path = root.join("BENCHMARKS.md");
    let earlier = std::fs::read_to_string(&path).unwrap_or_default();
    let git = |args: &[&str]| -> String {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let commit = format!(
        "{}{}",
        git(&["rev-parse", "--short", "HEAD"]),
        // The report itself does not count as a change to what it measures.
        if git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!BENCHMARKS.md"
        ])
        .is_empty()
        {
            ""
        } else {
            " with uncommitted changes"
        }
    );
    let profile = std::env::var("WEIR_BENCH_PROFILE").unwrap_or_else(|_| "dev".into());
    let command = |name: &str| match profile.as_str() {
        "dev" => format!("scripts/bench {name}"),
        other => format!("WEIR_BENCH_PROFILE={other} scripts/bench {name}"),
    };
    let mut sections = String::new();
    for (name, what) in BENCHMARKS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            let kept = section(&earlier, name).with_context(|| {
                format!("{} has no `{name}` section to keep: run it", path.display())
            })?;
            sections.push_str(kept);
            continue;
        }
        eprintln!("==> weir-bench {name}");
        let started = Instant::now();
        let out = std::process::Command::new(&me)
            .arg(name)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running weir-bench {name}"))?;
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{printed}");
        if !out.status.success() {
            bail!("weir-bench {name} failed ({})", out.status);
        }
        let _ = write!(
            sections,
            "\n## {name}\n\n{what}\n\n`{}` at commit `{commit}`, {profile} profile, {}, {:.0} s:\n\n```text\n{}\n```\n",
            command(name),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            started.elapsed().as_secs_f64(),
            printed.trim_end()
        );
    }
    let goals: Vec<String> = sections
        .split("\n## ")
        .skip(1)
        .flat_map(|s| {
            let name = s.lines().next().unwrap_or_default().to_owned();
            s.lines()
                .filter(|l| l.starts_with("goal"))
                .map(move |l| {
                    let goal = l.trim_start_matches("goals ").trim_start_matches("goal ");
                    format!("- `{name}`: {goal}")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let machine = std::env::var("WEIR_BENCH_MACHINE").unwrap_or_else(|_| "(unknown)".into());
    let text = format!(
        "# weir benchmarks\n\n\
         Written by `scripts/bench report`, which runs every benchmark below (about 10 minutes); \
         `scripts/bench report <name>…` runs those named again and keeps the others. Each section \
         gives the commit it was run at.\n\n\
         Machine and versions: {machine}. PostgreSQL and the broker run on the same cores as weir. \
         Each section gives its build profile: the dev profile builds weir at opt-level 2 and its \
         dependencies at 1 (see `Cargo.toml`), the release profile (`WEIR_BENCH_PROFILE=release`, \
         what `cargo install` builds) everything at 3.\n\n\
         ## Goals\n\n{}\n{sections}",
        goals.join("\n"),
    );
    std::fs::write(&path, text)?;
    eprintln!("==> wrote {}", path.display());
    Ok(())
}

/// The section `## <name>` of an earlier report, up to the next section.
fn section<'a>(report: &'a str, name: &str) -> Option<&'a str> {
    let start = report.find(&format!("\n## {name}\n"))?;
    let rest = &report[start + 1..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    Some(&report[start..start + 1 + end])
}
