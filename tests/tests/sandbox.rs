//! The Wasm sandbox: hostile guests (tests/guests/hostile) are stopped with errors that name the
//! component, the stage, the batch and the cause, and the host goes on serving other components.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::json;
use weir::config::WasmLimits;
use weir::wasm::{LoadedComponent, WasmHost, World};
use weir_tests::repo_root;

fn component(name: &str) -> PathBuf {
    repo_root()
        .join("guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

fn limits() -> WasmLimits {
    WasmLimits {
        memory_limit_bytes: 64 << 20,
        timeout_ms: 500,
        fuel: None,
        allow_clocks: false,
    }
}

fn hostile(limits: WasmLimits) -> Result<LoadedComponent> {
    Ok(WasmHost::new(limits)?.load(&component("hostile"), World::RowTransform)?)
}

fn batch() -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    Ok(RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from_iter_values(0..1_000))],
    )?)
}

/// Runs one batch through the hostile guest configured with `attack`; returns the error's text.
fn attack(loaded: &LoadedComponent, config: serde_json::Value) -> Result<String> {
    let mut transform = loaded.instantiate("bronze", &config)?;
    match transform.call(&batch()?, "offsets 7..=9") {
        Ok(_) => anyhow::bail!("the guest's attack {config} went unnoticed"),
        Err(e) => Ok(e.to_string()),
    }
}

#[test]
fn a_guest_that_never_returns_is_stopped_at_its_time_budget() -> Result<()> {
    // Compiling the component (a cold cache, with other tests compiling beside it) is not timed.
    let hostile = hostile(limits())?;
    let started = Instant::now();
    let error = attack(&hostile, json!({"attack": "spin"}))?;
    ensure!(
        error.contains("exceeded its time budget of 500 ms"),
        "{error}"
    );
    // The error names the stage, the component and the batch.
    ensure!(error.starts_with("bronze component "), "{error}");
    ensure!(error.contains("hostile.wasm"), "{error}");
    ensure!(error.contains("offsets 7..=9"), "{error}");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_guest_out_of_fuel_is_stopped() -> Result<()> {
    let limits = WasmLimits {
        fuel: Some(50_000_000),
        timeout_ms: 60_000,
        ..limits()
    };
    let error = attack(&hostile(limits)?, json!({"attack": "spin"}))?;
    ensure!(error.contains("ran out of fuel"), "{error}");
    Ok(())
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() -> Result<()> {
    let error = attack(&hostile(limits())?, json!({"attack": "memory"}))?;
    ensure!(error.contains("memory limit of 64 MiB"), "{error}");
    Ok(())
}

#[test]
fn an_instance_whose_memory_grew_is_replaced_after_its_call() -> Result<()> {
    // A guest keeping 40 MiB more on every call: with its instance kept, the second call would
    // pass the 56 MiB limit. Replaced once past 16 MiB, it never holds more than one call's worth.
    let limits = WasmLimits {
        memory_limit_bytes: 56 << 20,
        ..limits()
    };
    let loaded = hostile(limits)?;
    let mut transform = loaded.instantiate("bronze", &json!({"attack": "leak"}))?;
    let batch = batch()?;
    for call in 0..10 {
        let out = transform.call(&batch, &format!("call {call}"))?;
        ensure!(out.num_rows() == 1_000);
    }
    Ok(())
}

#[test]
fn a_guest_that_traps_fails_its_batch() -> Result<()> {
    let error = attack(&hostile(limits())?, json!({"attack": "trap"}))?;
    ensure!(error.contains("trapped"), "{error}");
    Ok(())
}

#[test]
fn after_a_trap_the_next_batch_gets_a_fresh_instance() -> Result<()> {
    let loaded = hostile(limits())?;
    let mut transform = loaded.instantiate("bronze", &json!({"attack": "trap-on-empty"}))?;
    let batch = batch()?;
    let error = match transform.call(&batch.slice(0, 0), "an empty batch") {
        Ok(_) => anyhow::bail!("the empty batch did not trap"),
        Err(e) => e.to_string(),
    };
    ensure!(error.contains("trapped"), "{error}");
    ensure!(transform.call(&batch, "the next batch")?.num_rows() == 1_000);
    Ok(())
}

#[test]
fn files_environment_network_and_clocks_are_out_of_reach() -> Result<()> {
    let loaded = hostile(limits())?;
    let error = attack(&loaded, json!({"attack": "file"}))?;
    ensure!(error.contains("file: denied"), "{error}");
    let error = attack(&loaded, json!({"attack": "environment"}))?;
    ensure!(
        error.contains("environment: 0 variables, 0 arguments"),
        "{error}"
    );
    // A port that is really listening, so only the sandbox can refuse the connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let error = attack(&loaded, json!({"attack": "network", "address": address}))?;
    ensure!(error.contains("network: denied"), "{error}");
    let error = attack(&loaded, json!({"attack": "clock"}))?;
    ensure!(error.contains("clock: 0 s since the epoch"), "{error}");
    Ok(())
}

#[test]
fn clocks_are_real_when_the_pipeline_allows_them() -> Result<()> {
    let limits = WasmLimits {
        allow_clocks: true,
        ..limits()
    };
    let error = attack(&hostile(limits)?, json!({"attack": "clock"}))?;
    let seconds: u64 = error
        .split("clock: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    ensure!(seconds > 1_700_000_000, "{error}");
    Ok(())
}

#[test]
fn the_host_keeps_serving_other_components_while_one_misbehaves() -> Result<()> {
    let limits = WasmLimits {
        timeout_ms: 3_000,
        ..limits()
    };
    let host = WasmHost::new(limits)?;
    let loaded = Arc::new(host.load(&component("hostile"), World::RowTransform)?);
    let spinning = {
        let loaded = loaded.clone();
        std::thread::spawn(move || attack(&loaded, json!({"attack": "spin"})))
    };
    // Meanwhile, on the same engine, another instance does its work undisturbed.
    let started = Instant::now();
    let mut passthrough = loaded.instantiate("silver", &json!({"attack": "none"}))?;
    for _ in 0..50 {
        let out = passthrough.call(&batch()?, "a batch")?;
        ensure!(out.num_rows() == 1_000);
    }
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "the other component waited for the spinning one"
    );
    let error = spinning
        .join()
        .map_err(|_| anyhow::anyhow!("the spinning guest's thread panicked"))??;
    ensure!(error.contains("exceeded its time budget"), "{error}");
    // And after the failure, a fresh instance of the same component serves again.
    let mut again = loaded.instantiate("bronze", &json!({"attack": "none"}))?;
    ensure!(again.call(&batch()?, "a batch")?.num_rows() == 1_000);
    Ok(())
}

#[test]
fn a_component_built_for_another_contract_version_is_refused() -> Result<()> {
    let host = WasmHost::new(limits())?;
    let error = match host.load(&component("future_contract"), World::RowTransform) {
        Ok(_) => anyhow::bail!("a weir:transform@0.2.0 component was accepted"),
        Err(e) => e.to_string(),
    };
    ensure!(error.contains("future_contract.wasm"), "{error}");
    ensure!(
        error.contains("built against weir:transform@0.2.0"),
        "{error}"
    );
    ensure!(
        error.contains(&format!(
            "implements weir:transform@{}",
            weir::wasm::contract_version()
        )),
        "{error}"
    );
    ensure!(weir::wasm::contract_version() == "0.1.0");
    Ok(())
}
