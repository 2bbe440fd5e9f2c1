//! The onlineshop data set at any scale, and a workload that changes it at a target rate.
//!
//! [`Generator`] draws transactions from the sample's value distributions (products with their
//! names and prices, customers with their countries, quantities and basket sizes, each as often as
//! in `pipelines/onlineshop/onlineshop-sample.csv`) and adds the full data set's quirks the first
//! 1,305 rows lack: cancellations (`C` transaction numbers, negative quantities) and missing
//! customers. Alphanumeric product numbers (`85123A`) come with the sample's products. The same
//! seed gives the same rows.
//!
//! [`drive`] runs inserts (whole baskets), updates and deletes at a target rate of changes per
//! second, one transaction per tick, and reports the rate it kept.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::SinkExt;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::repo_root;

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Self {
        // Any seed, zero included, gives a well-mixed non-zero state.
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1_000) < per_mille
    }

    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }
}

/// One onlineshop row, without its serial `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub transactionno: String,
    /// ISO `YYYY-MM-DD`.
    pub date: String,
    pub productno: String,
    pub productname: String,
    /// Two decimals, as the sample writes prices.
    pub price: String,
    pub quantity: i64,
    pub customerno: Option<String>,
    pub country: String,
}

/// The columns [`Row`] fills, in order, for `INSERT` and `COPY`.
pub const COLUMNS: &str =
    "transactionno, date, productno, productname, price, quantity, customerno, country";

/// The most changes one workload transaction makes, when the workload is behind its rate.
const MAX_TRANSACTION_CHANGES: u64 = 5_000;
/// Cancellations per thousand transactions (the full set has about 1.7%).
const CANCELLATIONS_PER_MILLE: u64 = 17;
/// Baskets without a customer number per thousand (rarer in the full set; kept visible here).
const NO_CUSTOMER_PER_MILLE: u64 = 5;
/// The full data set's span: 2018-12-01 to 2019-12-09.
const FIRST_DAY: (i32, u32, u32) = (2018, 12, 1);
const DAYS: u64 = 374;

struct Product {
    no: String,
    name: String,
    price: String,
}

struct Customer {
    no: String,
    country: String,
}

/// The sample's values, each as often as it occurs there.
struct Distributions {
    products: Vec<Product>,
    customers: Vec<Customer>,
    quantities: Vec<i64>,
    basket_sizes: Vec<u64>,
}

impl Distributions {
    fn from_sample() -> Result<Self> {
        let path = repo_root().join("pipelines/onlineshop/onlineshop-sample.csv");
        let mut reader = csv::Reader::from_path(&path)
            .with_context(|| format!("reading the sample data set {}", path.display()))?;
        let (mut products, mut customers, mut quantities) = (Vec::new(), Vec::new(), Vec::new());
        let mut basket_sizes = Vec::new();
        let mut current: Option<(String, u64)> = None;
        for (line, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("{}: row {}", path.display(), line + 2))?;
            let field = |i: usize| record.get(i).unwrap_or_default().trim().to_owned();
            products.push(Product {
                no: field(2),
                name: field(3),
                price: field(4),
            });
            customers.push(Customer {
                no: field(6),
                country: field(7),
            });
            quantities.push(field(5).parse().with_context(|| {
                format!(
                    "{}: row {}: quantity {:?}",
                    path.display(),
                    line + 2,
                    field(5)
                )
            })?);
            match &mut current {
                Some((transaction, size)) if *transaction == field(0) => *size += 1,
                _ => {
                    basket_sizes.extend(current.take().map(|(_, size)| size));
                    current = Some((field(0), 1));
                }
            }
        }
        basket_sizes.extend(current.map(|(_, size)| size));
        if products.is_empty() {
            bail!("{} has no rows", path.display());
        }
        Ok(Self {
            products,
            customers,
            quantities,
            basket_sizes,
        })
    }
}

/// Onlineshop rows, basket by basket, deterministic from a seed.
pub struct Generator {
    random: Random,
    values: Distributions,
    rows_per_day: u64,
    rows: u64,
    next_transaction: u64,
}

impl Generator {
    /// A generator whose dates span the full data set's year over `total_rows` rows.
    pub fn new(seed: u64, total_rows: u64) -> Result<Self> {
        Ok(Self {
            random: Random::new(seed),
            values: Distributions::from_sample()?,
            rows_per_day: (total_rows / DAYS).max(1),
            rows: 0,
            next_transaction: 536_370,
        })
    }

    /// The next basket: one transaction's lines, sharing its number, date and customer.
    pub fn basket(&mut self) -> Vec<Row> {
        let r = &mut self.random;
        let cancelled = r.chance(CANCELLATIONS_PER_MILLE);
        let size = if cancelled {
            1 + r.below(2)
        } else {
            *r.pick(&self.values.basket_sizes)
        };
        let customer = r.pick(&self.values.customers);
        let customerno = (!r.chance(NO_CUSTOMER_PER_MILLE)).then(|| customer.no.clone());
        let transactionno = format!(
            "{}{}",
            if cancelled { "C" } else { "" },
            self.next_transaction
        );
        self.next_transaction += 1;
        let day = (self.rows / self.rows_per_day) % DAYS;
        let date = first_day()
            .checked_add_days(chrono::Days::new(day))
            .unwrap_or_else(first_day)
            .format("%Y-%m-%d")
            .to_string();
        let mut basket = Vec::new();
        for _ in 0..size {
            let product = r.pick(&self.values.products);
            let quantity = r.pick(&self.values.quantities).abs().max(1);
            basket.push(Row {
                transactionno: transactionno.clone(),
                date: date.clone(),
                productno: product.no.clone(),
                productname: product.name.clone(),
                price: product.price.clone(),
                quantity: if cancelled { -quantity } else { quantity },
                customerno: customerno.clone(),
                country: customer.country.clone(),
            });
        }
        self.rows += size;
        basket
    }

    /// The random source baskets draw from, for workloads that need more choices.
    pub fn random(&mut self) -> &mut Random {
        &mut self.random
    }
}

fn first_day() -> chrono::NaiveDate {
    let (y, m, d) = FIRST_DAY;
    chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
}

/// Writes rows as CSV with a header, as the sample is (but with ISO dates).
pub fn write_csv(rows: &[Row], out: &mut Vec<u8>) -> Result<()> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    for row in rows {
        w.write_record([
            row.transactionno.as_str(),
            row.date.as_str(),
            row.productno.as_str(),
            row.productname.as_str(),
            row.price.as_str(),
            &row.quantity.to_string(),
            row.customerno.as_deref().unwrap_or(""),
            row.country.as_str(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// Loads `rows` generated rows into `table` (which has the onlineshop columns) with `COPY`, in
/// chunks; returns the number of rows copied.
pub async fn load(db: &Client, table: &str, rows: u64, seed: u64) -> Result<u64> {
    let mut generator = Generator::new(seed, rows)?;
    let sink = db
        .copy_in(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN WITH (FORMAT csv)"
        ))
        .await
        .with_context(|| format!("starting COPY into {table}"))?;
    futures::pin_mut!(sink);
    let (mut made, mut chunk, mut buffer) = (0, Vec::new(), Vec::new());
    while made < rows {
        let mut basket = generator.basket();
        basket.truncate((rows - made) as usize);
        made += basket.len() as u64;
        chunk.extend(basket);
        if chunk.len() >= 10_000 || made == rows {
            buffer.clear();
            write_csv(&chunk, &mut buffer)?;
            chunk.clear();
            sink.send(bytes::Bytes::copy_from_slice(&buffer)).await?;
        }
    }
    Ok(sink.finish().await?)
}

/// What a workload did: changes PostgreSQL reported, per kind, in committed transactions.
#[derive(Debug, Default, Clone)]
pub struct Workload {
    pub transactions: u64,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    /// Transactions that failed (the server restarting, say); their changes are not counted.
    pub failed: u64,
    pub elapsed: Duration,
}

impl Workload {
    pub fn changes(&self) -> u64 {
        self.inserts + self.updates + self.deletes
    }

    pub fn rate(&self) -> f64 {
        self.changes() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} changes ({} inserts, {} updates, {} deletes) in {} transactions over {:.1} s: {:.0} changes/s; {} transactions failed",
            self.changes(),
            self.inserts,
            self.updates,
            self.deletes,
            self.transactions,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.failed
        )
    }
}

/// Changes `table` at `rate` changes per second until `duration` passes or `stop` is cancelled:
/// 60% inserts (whole baskets), 30% updates and 10% deletes of random existing ids, in one
/// transaction every 10 ms. A transaction that fails is counted and the workload goes on,
/// reconnecting through `connect` when the connection is gone.
pub async fn drive<C, F>(
    connect: C,
    table: &str,
    rate: f64,
    duration: Duration,
    seed: u64,
    stop: &CancellationToken,
) -> Result<Workload>
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<Client>>,
{
    let mut db = connect().await?;
    let mut generator = Generator::new(seed, (rate * duration.as_secs_f64()) as u64)?;
    let mut workload = Workload::default();
    let tick = Duration::from_millis(10);
    let started = Instant::now();
    let mut ids = id_range(&db, table).await?;
    let mut pending: Vec<Row> = Vec::new();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed() < duration && !stop.is_cancelled() {
        ticker.tick().await;
        // Changes owed so far, less those made: a slow tick is made up by the next ones.
        let due = rate * started.elapsed().as_secs_f64() - workload.changes() as f64;
        if due < 1.0 {
            continue;
        }
        let (mut inserts, mut updates, mut deletes) = (0, Vec::new(), Vec::new());
        for _ in 0..(due as u64).min(MAX_TRANSACTION_CHANGES) {
            match generator.random().below(10) {
                0..6 => inserts += 1,
                6..9 => updates.push(pick_id(generator.random(), ids)),
                _ => deletes.push(pick_id(generator.random(), ids)),
            }
        }
        // Baskets continue into the next transaction where this one has no room left.
        while pending.len() < inserts {
            pending.extend(generator.basket());
        }
        let rows: Vec<Row> = pending.drain(..inserts).collect();
        let quantity_step = 1 + generator.random().below(3) as i32;
        match change(&mut db, table, &rows, &updates, &deletes, quantity_step).await {
            Ok((inserted_max, counts)) => {
                workload.transactions += 1;
                workload.inserts += counts.0;
                workload.updates += counts.1;
                workload.deletes += counts.2;
                if let Some(max) = inserted_max {
                    ids.1 = ids.1.max(max);
                }
            }
            Err(e) => {
                workload.failed += 1;
                tracing::warn!("workload transaction failed: {e:#}");
                if db.is_closed() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Ok(fresh) = connect().await {
                        db = fresh;
                        ids = id_range(&db, table).await.unwrap_or(ids);
                    }
                }
            }
        }
    }
    workload.elapsed = started.elapsed();
    Ok(workload)
}

async fn id_range(db: &Client, table: &str) -> Result<(i64, i64)> {
    let row = db
        .query_one(
            &format!(
                "SELECT COALESCE(min(id), 1)::bigint, COALESCE(max(id), 1)::bigint FROM {table}"
            ),
            &[],
        )
        .await
        .with_context(|| format!("reading the id range of {table}"))?;
    Ok((row.get(0), row.get(1)))
}

fn pick_id(random: &mut Random, (low, high): (i64, i64)) -> i64 {
    low + random.below((high - low + 1).max(1) as u64) as i64
}

/// One workload transaction; returns the largest id inserted and the rows each kind changed.
async fn change(
    db: &mut Client,
    table: &str,
    rows: &[Row],
    updates: &[i64],
    deletes: &[i64],
    quantity_step: i32,
) -> Result<(Option<i64>, (u64, u64, u64))> {
    let tx = db.transaction().await?;
    let mut inserted_max = None;
    if !rows.is_empty() {
        // One statement for the basket: unnest the columns rather than building SQL text.
        let column = |f: &dyn Fn(&Row) -> Option<String>| -> Vec<Option<String>> {
            rows.iter().map(f).collect()
        };
        let inserted = tx
            .query(
                &format!(
                    "INSERT INTO {table} ({COLUMNS})
                     SELECT t, d::date, pn, name, p::numeric, q::int, c, country
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
                          AS u(t, d, pn, name, p, q, c, country)
                     RETURNING id::bigint"
                ),
                &[
                    &column(&|r| Some(r.transactionno.clone())),
                    &column(&|r| Some(r.date.clone())),
                    &column(&|r| Some(r.productno.clone())),
                    &column(&|r| Some(r.productname.clone())),
                    &column(&|r| Some(r.price.clone())),
                    &column(&|r| Some(r.quantity.to_string())),
                    &column(&|r| r.customerno.clone()),
                    &column(&|r| Some(r.country.clone())),
                ],
            )
            .await
            .context("inserting a basket")?;
        inserted_max = inserted.iter().map(|r| r.get::<_, i64>(0)).max();
    }
    let updated = if updates.is_empty() {
        0
    } else {
        tx.execute(
            &format!("UPDATE {table} SET quantity = quantity + $2 WHERE id = ANY($1::bigint[])"),
            &[&updates, &quantity_step],
        )
        .await
        .context("updating")?
    };
    let deleted = if deletes.is_empty() {
        0
    } else {
        tx.execute(
            &format!("DELETE FROM {table} WHERE id = ANY($1::bigint[])"),
            &[&deletes],
        )
        .await
        .context("deleting")?
    };
    tx.commit().await.context("committing")?;
    Ok((inserted_max, (rows.len() as u64, updated, deleted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_rows_and_another_seed_other_rows() -> Result<()> {
        let rows = |seed| -> Result<Vec<Row>> {
            let mut g = Generator::new(seed, 10_000)?;
            Ok((0..500).flat_map(|_| g.basket()).collect())
        };
        assert_eq!(rows(7)?, rows(7)?);
        assert_ne!(rows(7)?, rows(8)?);
        Ok(())
    }

    #[test]
    fn generated_rows_have_the_full_data_sets_quirks() -> Result<()> {
        let mut g = Generator::new(1, 100_000)?;
        let mut rows = Vec::new();
        while rows.len() < 100_000 {
            rows.extend(g.basket());
        }
        let cancellations: Vec<&Row> = rows
            .iter()
            .filter(|r| r.transactionno.starts_with('C'))
            .collect();
        assert!(!cancellations.is_empty());
        assert!(cancellations.iter().all(|r| r.quantity < 0));
        assert!(
            rows.iter()
                .filter(|r| !r.transactionno.starts_with('C'))
                .all(|r| r.quantity > 0)
        );
        assert!(rows.iter().any(|r| r.customerno.is_none()));
        assert!(
            rows.iter()
                .any(|r| r.productno.chars().any(|c| c.is_ascii_alphabetic()))
        );
        // Dates spread over the data set's year, in order.
        assert_eq!(rows[0].date, "2018-12-01");
        assert!(rows.windows(2).all(|w| w[0].date <= w[1].date));
        assert!(rows.last().is_some_and(|r| r.date.as_str() > "2019-01-01"));
        Ok(())
    }

    #[test]
    fn values_come_from_the_sample() -> Result<()> {
        let sample = Distributions::from_sample()?;
        let mut g = Generator::new(3, 1_000)?;
        for row in (0..200).flat_map(|_| g.basket()) {
            assert!(sample.products.iter().any(|p| p.no == row.productno
                && p.name == row.productname
                && p.price == row.price));
            assert!(sample.customers.iter().any(|c| c.country == row.country));
        }
        Ok(())
    }
}
