//! Random workloads against PostgreSQL: inserts, updates (many of one key in one transaction),
//! deletes, deletes followed by inserts of the same id, and truncates, in random transactions
//! between pipeline runs. After every run silver equals the source table and gold equals
//! PostgreSQL's GROUP BY, on local folders, Azure Blob Storage and S3. `WEIR_LONG=1` runs many
//! more rounds.

use anyhow::{Context, Result};
use weir_tests::onlineshop::Random;
use weir_tests::{
    ObjectStore, Tables, TestPipeline, assert_gold_equals_group_by_in,
    assert_silver_equals_source_in, weir_ok,
};

const COUNTRIES: [&str; 5] = ["United Kingdom", "France", "Germany", "EIRE", "Netherlands"];

fn insert(id: Option<u64>, r: &mut Random) -> String {
    let product = r.below(40);
    let cancelled = r.chance(50);
    format!(
        "INSERT INTO onlineshop ({id_column}transactionno, date, productno, productname, price, quantity, customerno, country)
         VALUES ({id_value}'{t}{tx}', DATE '2019-12-01' + {day}, '2{product:04}{suffix}', 'Product {product}', {price}.{cents:02},
                 {quantity}, {customer}, '{country}')",
        id_column = if id.is_some() { "id, " } else { "" },
        id_value = id.map_or(String::new(), |i| format!("{i}, ")),
        t = if cancelled { "C" } else { "" },
        tx = 580_000 + r.below(5_000),
        day = r.below(20),
        suffix = if product.is_multiple_of(3) { "A" } else { "" },
        price = 1 + product % 9,
        cents = r.below(100),
        quantity = if cancelled { -(1 + r.below(5) as i64) } else { 1 + r.below(24) as i64 },
        customer = if r.chance(100) { "NULL".to_owned() } else { format!("'1{}'", 2_000 + r.below(900)) },
        country = COUNTRIES[r.below(COUNTRIES.len() as u64) as usize],
    )
}

/// One random transaction touching ids up to `max_id`.
fn transaction(r: &mut Random, max_id: u64, truncate: bool) -> String {
    let mut statements = vec!["BEGIN".to_owned()];
    if truncate {
        statements.push("TRUNCATE onlineshop".into());
    }
    for _ in 0..1 + r.below(12) {
        let id = 1 + r.below(max_id);
        statements.push(match r.below(10) {
            0..3 => insert(None, r),
            3..6 => format!(
                "UPDATE onlineshop SET quantity = quantity + {}, price = price + 0.{:02} WHERE id = {id}",
                1 + r.below(3),
                r.below(100)
            ),
            6 => format!(
                "UPDATE onlineshop SET country = '{}', productname = productname || ' v2' WHERE id = {id}",
                COUNTRIES[r.below(COUNTRIES.len() as u64) as usize]
            ),
            7 => format!("DELETE FROM onlineshop WHERE id = {id}"),
            // Delete then insert the same id, in the same transaction.
            8 => format!(
                "DELETE FROM onlineshop WHERE id = {id}; {}",
                insert(Some(id), r)
            ),
            // Many updates of one key in one transaction.
            _ => (0..2 + r.below(4))
                .map(|_| format!("UPDATE onlineshop SET quantity = quantity * 2 - 1 WHERE id = {id}"))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    statements.push("COMMIT".into());
    statements.join(";\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_end_with_silver_and_gold_equal_to_postgres() -> Result<()> {
    random_workloads("random_workload", None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_on_azure_blob_storage() -> Result<()> {
    random_workloads("random_workload_azure", Some(ObjectStore::Azure)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_on_s3() -> Result<()> {
    random_workloads("random_workload_s3", Some(ObjectStore::S3)).await
}

/// Rounds of random transactions, each followed by a triggered run and the equality checks; on
/// `store` (through the weir binary, with the store's settings in its environment) or on local
/// folders (in this process).
async fn random_workloads(test: &str, store: Option<ObjectStore>) -> Result<()> {
    let long = std::env::var_os("WEIR_LONG").is_some();
    let (seeds, rounds) = match (long, store) {
        (true, _) => (5_u64, 25),
        (false, None) => (1, 5),
        (false, Some(_)) => (1, 3),
    };
    let env = store.map(ObjectStore::env).transpose()?.unwrap_or_default();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for seed in 1..=seeds {
        let t = TestPipeline::new(test).await?;
        t.load_sample().await?;
        let pipeline = match store {
            None => t.pipeline()?,
            Some(store) => t.pipeline_in(store)?,
        };
        let file = t.pipeline_path().display().to_string();
        let tables = match store {
            None => Tables::InProcess(&pipeline),
            Some(_) => Tables::Cli {
                file: &file,
                env: &env,
            },
        };
        let mut r = Random::new(seed);
        let truncate_round = r.below(rounds);
        for round in 0..rounds {
            for i in 0..1 + r.below(30) {
                let max_id: i64 =
                    t.db.query_one("SELECT COALESCE(max(id), 1)::bigint FROM onlineshop", &[])
                        .await?
                        .get(0);
                let sql = transaction(&mut r, max_id as u64 + 5, round == truncate_round && i == 0);
                // A reinsert may hit an id the serial has since handed out: skip that transaction.
                if let Err(e) = t.db.batch_execute(&sql).await {
                    t.db.batch_execute("ROLLBACK").await?;
                    anyhow::ensure!(
                        e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
                        "seed {seed} round {round}: {e}\n{sql}"
                    );
                }
            }
            match store {
                None => weir::pipeline::run_triggered(&pipeline).await.map(drop)?,
                Some(_) => weir_ok(&["run", &file, "--triggered"], &env)
                    .await
                    .map(drop)?,
            }
            assert_silver_equals_source_in(&t, &tables)
                .await
                .with_context(|| format!("seed {seed}, after round {round}"))?;
            assert_gold_equals_group_by_in(&t, &tables)
                .await
                .with_context(|| format!("seed {seed}, after round {round}"))?;
        }
    }
    Ok(())
}
