//! The bronze layer's cost in the sandbox: `bronze-cleanup` as a Wasm component (Arrow IPC across
//! the boundary, as a pipeline runs it) next to the same Rust function called natively, on
//! 1,000,000 landing rows in batches of 10,000; then instantiation time and the per-call overhead of
//! an empty batch. The Wasm time is split into the component's code and the boundary with
//! `repeated-bronze` (tests/guests), which cleans each batch once or several times per call. Five
//! rounds alternate them all; the medians are compared.
//!
//! The rows are Debezium events as weir emits them for the onlineshop table (decimals as strings,
//! as `pipelines/onlineshop.toml` sets), built from the quickstart's CSV: 60% inserts, 30% updates
//! (with their before image) and 10% deletes (key only), flattened by the landing stage's own code.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use serde_json::{Value, json};
use weir::config::WasmLimits;
use weir::wasm::{WasmHost, World};
use weir_tests::repo_root;

const ROWS: usize = 1_000_000;
const BATCH_ROWS: usize = 10_000;
const EMPTY_CALLS: u32 = 1_000;
const ROUNDS: usize = 5;
/// How often `repeated-bronze` cleans each batch in the calls set against its single pass.
const REPEATS: u32 = 4;

pub fn run() -> Result<()> {
    println!("building {ROWS} landing rows in batches of {BATCH_ROWS}…");
    let batches = landing_batches(ROWS)?;
    let component =
        repo_root().join("guest-examples/target/wasm32-wasip2/release/bronze_cleanup.wasm");

    // Wasm: one engine, one instance, one call per batch, as a pipeline's bronze stage.
    let limits = WasmLimits {
        memory_limit_bytes: 256 << 20,
        timeout_ms: 10_000,
        fuel: None,
        allow_clocks: false,
    };
    // One engine for both components, as a pipeline has.
    let host = WasmHost::new(limits)?;
    let started = Instant::now();
    let loaded = host.load(&component, World::RowTransform)?;
    let load = started.elapsed();
    let started = Instant::now();
    let mut transform = loaded.instantiate("bronze", &json!({}))?;
    let instantiate = started.elapsed();

    // The same code split from its boundary: `repeated-bronze` cleans each batch once, or REPEATS
    // times, behind one crossing; the difference is REPEATS − 1 passes of the code alone.
    let repeated_bronze = host.load(
        &repo_root().join("guest-examples/target/wasm32-wasip2/release/repeated_bronze.wasm"),
        World::RowTransform,
    )?;
    let mut once = repeated_bronze.instantiate("bronze", &json!({"times": 1}))?;
    let mut repeated = repeated_bronze.instantiate("bronze", &json!({"times": REPEATS}))?;

    // Rounds alternate them all, so that a noisy neighbour on the machine slows each alike; the
    // medians are compared.
    let [
        mut native_times,
        mut wasm_times,
        mut once_times,
        mut repeated_times,
    ] = [(); 4].map(|()| Vec::new());
    for round in 1..=ROUNDS {
        // Native: the component's own crate, linked into this binary.
        let started = Instant::now();
        let mut native_rows = 0;
        for batch in &batches {
            let out =
                bronze_cleanup::cleanup(batch).map_err(|e| anyhow::anyhow!("native: {e:?}"))?;
            native_rows += out.num_rows();
        }
        native_times.push(started.elapsed());

        let (time, wasm_rows) = wasm_pass(&mut transform, &batches)?;
        wasm_times.push(time);
        if wasm_rows != native_rows {
            bail!("the component returned {wasm_rows} rows, the native function {native_rows}");
        }
        once_times.push(wasm_pass(&mut once, &batches)?.0);
        repeated_times.push(wasm_pass(&mut repeated, &batches)?.0);
        println!(
            "  round {round}: native {:.3} s, Wasm {:.3} s; repeated-bronze ×1 {:.3} s, ×{REPEATS} {:.3} s",
            native_times[round - 1].as_secs_f64(),
            wasm_times[round - 1].as_secs_f64(),
            once_times[round - 1].as_secs_f64(),
            repeated_times[round - 1].as_secs_f64(),
        );
    }
    let (native, wasm) = (median(&mut native_times), median(&mut wasm_times));
    let (once, repeated) = (median(&mut once_times), median(&mut repeated_times));
    let code_alone = repeated.saturating_sub(once) / (REPEATS - 1);
    let boundary = once.saturating_sub(code_alone);

    // The host's share of the boundary: encoding inputs and decoding outputs as IPC.
    let started = Instant::now();
    for batch in &batches {
        let bytes = weir::wasm::encode_ipc(batch)?;
        let back = weir::wasm::decode_ipc(bytes)?;
        std::hint::black_box(back);
    }
    let host_ipc = started.elapsed();
    let input_bytes = weir::wasm::encode_ipc(&batches[0])?.len();
    let output_bytes = weir::wasm::encode_ipc(
        &bronze_cleanup::cleanup(&batches[0]).map_err(|e| anyhow::anyhow!("native: {e:?}"))?,
    )?
    .len();

    let empty = batches[0].slice(0, 0);
    let started = Instant::now();
    for _ in 0..EMPTY_CALLS {
        transform.call(&empty, "empty")?;
    }
    let per_empty_call = started.elapsed() / EMPTY_CALLS;

    let rate = |d: Duration| ROWS as f64 / d.as_secs_f64();
    let ratio = wasm.as_secs_f64() / native.as_secs_f64();
    println!(
        "\nbronze-cleanup on {ROWS} change rows ({} batches)",
        batches.len()
    );
    println!(
        "  native Rust function (median)      {:7.2} s  {:>10.0} rows/s",
        native.as_secs_f64(),
        rate(native)
    );
    println!(
        "  Wasm component, IPC in+out (median){:7.2} s  {:>10.0} rows/s",
        wasm.as_secs_f64(),
        rate(wasm)
    );
    println!("  ratio Wasm time / native time      {ratio:.2}");
    println!(
        "  the component's code alone in Wasm {:7.2} s  ({:.2}× native; repeated-bronze)",
        code_alone.as_secs_f64(),
        code_alone.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "  the boundary alone (IPC, copies)   {:7.2} s",
        boundary.as_secs_f64()
    );
    println!(
        "  of which the host's IPC encode+decode of the inputs  {:7.2} s",
        host_ipc.as_secs_f64()
    );
    println!(
        "  Arrow IPC per batch of {BATCH_ROWS} rows  {:7.2} MiB in, {:.2} MiB out",
        input_bytes as f64 / (1 << 20) as f64,
        output_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  loading the component              {:7.1} ms (compile, or the engine's disk cache)",
        ms(load)
    );
    println!(
        "  instantiating and configuring      {:7.2} ms",
        ms(instantiate)
    );
    println!(
        "  per call with an empty batch       {:7.1} µs",
        per_empty_call.as_secs_f64() * 1e6
    );
    println!(
        "goal (issue 4): Wasm ≤ 1.5× native time: {}",
        if ratio <= 1.5 { "met" } else { "MISSED" }
    );
    Ok(())
}

/// One call per batch: the time and the rows returned.
fn wasm_pass(
    transform: &mut weir::wasm::Transform,
    batches: &[RecordBatch],
) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let mut rows = 0;
    for (i, batch) in batches.iter().enumerate() {
        rows += transform.call(batch, &format!("batch {i}"))?.num_rows();
    }
    Ok((started.elapsed(), rows))
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `rows` landing rows in batches of [`BATCH_ROWS`]: Debezium events flattened and batched by weir's
/// landing stage.
pub fn landing_batches(count: usize) -> Result<Vec<RecordBatch>> {
    let products = sample_rows(&repo_root().join("pipelines/onlineshop/onlineshop-sample.csv"))?;
    let mut batches = Vec::new();
    let mut rows = Vec::with_capacity(BATCH_ROWS);
    for i in 0..count {
        let id = i as i64 + 1;
        let product = &products[i % products.len()];
        let after = || {
            let mut image = product.clone();
            image["id"] = json!(id);
            image
        };
        let (op, before, after) = match i % 10 {
            0..6 => ("c", Value::Null, after()),
            6..9 => ("u", after(), after()),
            _ => ("d", json!({"id": id}), Value::Null),
        };
        let lsn = 16_000_000 + id * 64;
        let event = json!({
            "before": before,
            "after": after,
            "source": {
                "version": "weir-0.1.0", "connector": "postgresql", "name": "postgres",
                "ts_ms": 1_706_320_010_879_i64 + id, "snapshot": "false", "db": "business",
                "schema": "public", "table": "onlineshop", "txId": 37_557 + id / 1_000,
                "lsn": lsn, "xmin": null, "commit_lsn": lsn,
            },
            "op": op,
            "ts_ms": 1_706_320_010_884_i64 + id,
            "transaction": null,
        });
        let key = format!("{{\"id\":{id}}}");
        rows.push(
            weir::landing::flatten_event(
                event,
                Some(key.as_bytes()),
                "postgres.public.onlineshop",
                0,
                i as i64,
                Some(1_706_320_010_900),
            )
            .map_err(|e| anyhow::anyhow!("flattening event {i}: {e}"))?,
        );
        if rows.len() == BATCH_ROWS {
            batches.push(weir::landing::rows_to_batch(&rows).map_err(|e| anyhow::anyhow!(e))?);
            rows.clear();
        }
    }
    Ok(batches)
}

/// The quickstart CSV's rows as Debezium `after` images (text columns as text, price as a string).
fn sample_rows(csv: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let [
            transactionno,
            date,
            productno,
            productname,
            price,
            quantity,
            customerno,
            country,
        ] = f[..]
        else {
            continue; // quoted commas: skipped, the sample has enough plain rows
        };
        let quantity: i64 = quantity
            .parse()
            .with_context(|| format!("{}:{}: quantity {quantity:?}", csv.display(), n + 1))?;
        rows.push(json!({
            "transactionno": transactionno, "date": date, "productno": productno,
            "productname": productname, "price": price, "quantity": quantity,
            "customerno": customerno, "country": country,
        }));
    }
    if rows.is_empty() {
        bail!("no rows in {}", csv.display());
    }
    Ok(rows)
}
