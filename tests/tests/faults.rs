//! The fault-injection suite's short form: `scripts/faults --short` kills each stage's process,
//! crashes the broker and PostgreSQL, stalls and cuts the object store and deploys a trapping
//! component while a workload runs, then checks that silver equals the source, gold equals the
//! GROUP BY, the topic holds every committed change, no offset is in two landing files and bronze
//! holds each of the topic's change events exactly once. It runs on services of its own
//! (target/faults/services), so the crashes do not reach the other tests.

use anyhow::{Result, ensure};

#[test]
fn under_crashes_and_outages_nothing_is_lost_or_duplicated() -> Result<()> {
    let out = std::process::Command::new(weir_tests::repo_root().join("scripts/faults"))
        .arg("--short")
        // scripts/test has built weir, the suite and the guests.
        .env("WEIR_FAULTS_NO_BUILD", "1")
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    println!("{printed}");
    ensure!(
        out.status.success() && printed.contains("PASS"),
        "the fault suite failed:\n{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
