//! The component host: runs each layer's transform as a sandboxed WebAssembly component.
//!
//! One [`WasmHost`] (one wasmtime `Engine`) per process; components are compiled once (and cached on
//! disk by wasmtime, keyed by the component's hash and the engine's version) and instantiated per
//! worker. Guests get no files, sockets or environment; every call runs under a memory cap and an
//! epoch deadline (and optional fuel). A trap, timeout, limit hit or bad IPC fails that batch with a
//! [`WasmError`] naming the component, the stage, the batch and the cause; the host never dies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::config::WasmLimits;

mod row {
    wasmtime::component::bindgen!({ path: "../wit", world: "row-transform" });
}
mod agg {
    // Shares the interfaces' types (and the host implementation) with the row world.
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "aggregate",
        with: {
            "weir:transform/types": super::row::weir::transform::types,
            "weir:transform/host": super::row::weir::transform::host,
        },
    });
}

/// Epoch ticks per second: the time budget's resolution.
const TICKS_PER_SECOND: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("component {component}: cannot load: {message}")]
    Load { component: PathBuf, message: String },
    #[error(
        "component {component} does not export the `{world}` world of weir:transform: {message}"
    )]
    WrongWorld {
        component: PathBuf,
        world: &'static str,
        message: String,
    },
    #[error(
        "component {component} was built against weir:transform@{found}, but this weir implements \
         weir:transform@{supported}: rebuild it against the WIT in weir's wit/ folder (or its SDK, \
         weir-guest) of this version"
    )]
    IncompatibleContract {
        component: PathBuf,
        found: String,
        supported: &'static str,
    },
    #[error("{stage} component {component} rejected its configuration: {message}")]
    Configure {
        stage: String,
        component: PathBuf,
        message: String,
    },
    #[error("{stage} component {component} failed on batch {batch}: {cause}")]
    Batch {
        stage: String,
        component: PathBuf,
        batch: String,
        cause: String,
    },
}

pub type Result<T, E = WasmError> = std::result::Result<T, E>;

impl WasmError {
    /// The stage whose component failed, once the component serves one.
    pub fn stage(&self) -> Option<&str> {
        match self {
            Self::Configure { stage, .. } | Self::Batch { stage, .. } => Some(stage),
            _ => None,
        }
    }
}

/// Which WIT world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    RowTransform,
    Aggregate,
}

impl World {
    fn name(self) -> &'static str {
        match self {
            World::RowTransform => "row-transform",
            World::Aggregate => "aggregate",
        }
    }
}

/// The process-wide engine with its epoch ticker.
#[derive(Clone)]
pub struct WasmHost {
    engine: Engine,
    limits: WasmLimits,
    _ticker: Arc<Ticker>,
}

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl WasmHost {
    pub fn new(limits: WasmLimits) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(limits.fuel.is_some());
        // Component authors profile their guests with `perf`: WEIR_WASM_PROFILER=perfmap writes
        // /tmp/perf-<pid>.map, which names the compiled guest functions in `perf report`.
        if std::env::var("WEIR_WASM_PROFILER").as_deref() == Ok("perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        // The on-disk cache makes restarts skip Cranelift; failing to set it up only costs time.
        match wasmtime::Cache::new(wasmtime::CacheConfig::new()) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(e) => tracing::warn!(error = %e, "wasm compilation cache unavailable"),
        }
        let engine = Engine::new(&config).map_err(|e| WasmError::Load {
            component: PathBuf::new(),
            message: e.to_string(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ticking_engine, ticking_stop) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("weir-wasm-epoch".into())
            .spawn(move || {
                while !ticking_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1000 / TICKS_PER_SECOND));
                    ticking_engine.increment_epoch();
                }
            })
            .map_err(|e| WasmError::Load {
                component: PathBuf::new(),
                message: e.to_string(),
            })?;
        Ok(Self {
            engine,
            limits,
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    /// Compiles a component and checks that it exports `world`.
    pub fn load(&self, path: &Path, world: World) -> Result<LoadedComponent> {
        let load_err = |message: String| WasmError::Load {
            component: path.to_owned(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| load_err(e.to_string()))?;
        let component =
            Component::new(&self.engine, &bytes).map_err(|e| load_err(format!("{e:#}")))?;
        check_contract_version(&component, &self.engine, path)?;
        let mut linker: Linker<GuestState> = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| load_err(e.to_string()))?;
        let wrong = |e: wasmtime::Error| WasmError::WrongWorld {
            component: path.to_owned(),
            world: world.name(),
            message: format!("{e:#}"),
        };
        let pre = match world {
            World::RowTransform => {
                row::RowTransform::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                    .map_err(wrong)?;
                let pre = linker.instantiate_pre(&component).map_err(wrong)?;
                Pre::Row(row::RowTransformPre::new(pre).map_err(wrong)?)
            }
            World::Aggregate => {
                agg::Aggregate::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                    .map_err(wrong)?;
                let pre = linker.instantiate_pre(&component).map_err(wrong)?;
                Pre::Agg(agg::AggregatePre::new(pre).map_err(wrong)?)
            }
        };
        Ok(LoadedComponent {
            host: self.clone(),
            path: path.to_owned(),
            pre,
        })
    }
}

/// The `weir:transform` version this host implements, as `wit/` declares it.
pub fn contract_version() -> &'static str {
    include_str!("../../wit/weir-transform.wit")
        .lines()
        .find_map(|line| line.trim().strip_prefix("package weir:transform@"))
        .map_or("unknown", |version| version.trim_end_matches(';'))
}

/// Refuses a component whose `weir:transform` imports are of a version this host cannot serve,
/// before linking would fail with a less telling "no matching implementation".
fn check_contract_version(component: &Component, engine: &Engine, path: &Path) -> Result<()> {
    let supported = contract_version();
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        let Some(interface) = name.strip_prefix("weir:transform/") else {
            continue;
        };
        let found = interface.split_once('@').map_or("(none)", |(_, v)| v);
        if !semver_compatible(found, supported) {
            return Err(WasmError::IncompatibleContract {
                component: path.to_owned(),
                found: found.to_owned(),
                supported,
            });
        }
    }
    Ok(())
}

/// Cargo's rule: the same major version, or for 0.x the same minor.
fn semver_compatible(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(a), parts(b)) {
        (Some((0, a_minor)), Some((0, b_minor))) => a_minor == b_minor,
        (Some((a_major, _)), Some((b_major, _))) => a_major == b_major,
        _ => false,
    }
}

#[derive(Clone)]
enum Pre {
    Row(row::RowTransformPre<GuestState>),
    Agg(agg::AggregatePre<GuestState>),
}

/// A compiled, link-checked component, ready to instantiate per worker.
#[derive(Clone)]
pub struct LoadedComponent {
    host: WasmHost,
    path: PathBuf,
    pre: Pre,
}

impl LoadedComponent {
    /// Instantiates the component for `stage` and hands it its configuration.
    pub fn instantiate(&self, stage: &str, config: &serde_json::Value) -> Result<Transform> {
        let limits = self.host.limits;
        let mut store = new_store(&self.host.engine, limits, &self.path);
        arm(&mut store, limits);
        let load_err = |e: wasmtime::Error| WasmError::Load {
            component: self.path.clone(),
            message: format!("{e:#}"),
        };
        let instance = outside_async(|| match &self.pre {
            Pre::Row(pre) => pre.instantiate(&mut store).map(Instance::Row),
            Pre::Agg(pre) => pre.instantiate(&mut store).map(Instance::Agg),
        })
        .map_err(load_err)?;
        let config_json = config.to_string();
        arm(&mut store, limits);
        let outcome = outside_async(|| match &instance {
            Instance::Row(i) => i.call_configure(&mut store, &config_json),
            Instance::Agg(i) => i.call_configure(&mut store, &config_json),
        });
        let configure_err = |message: String| WasmError::Configure {
            stage: stage.to_owned(),
            component: self.path.clone(),
            message,
        };
        match outcome {
            Ok(Ok(())) => Ok(Transform {
                stage: stage.to_owned(),
                store,
                instance,
                loaded: self.clone(),
                config: config.clone(),
                trapped: false,
                input_ipc: Vec::new(),
            }),
            Ok(Err(e)) => Err(configure_err(e.message)),
            Err(trap) => Err(configure_err(describe_trap(&trap, limits))),
        }
    }
}

enum Instance {
    Row(row::RowTransform),
    Agg(agg::Aggregate),
}

/// One instance of a component, owned by one worker.
pub struct Transform {
    stage: String,
    store: Store<GuestState>,
    instance: Instance,
    /// What it was made from (the component's path and limits), and what replaces an instance a
    /// trap left unusable.
    loaded: LoadedComponent,
    config: serde_json::Value,
    trapped: bool,
    /// The last input's encoding, whose allocation the next call reuses: a fresh one of a few
    /// megabytes per call would cost its page faults and regrowth again each time.
    input_ipc: Vec<u8>,
}

impl Transform {
    /// Runs one batch through the component. `batch_label` names the batch in errors
    /// (e.g. the landing file, or the Delta versions it came from).
    pub fn call(&mut self, batch: &RecordBatch, batch_label: &str) -> Result<RecordBatch> {
        let (stage, component) = (self.stage.clone(), self.loaded.path.clone());
        let fail = |cause: String| WasmError::Batch {
            stage: stage.clone(),
            component: component.clone(),
            batch: batch_label.to_owned(),
            cause,
        };
        if self.trapped {
            // A trapped instance cannot be entered again.
            self.replace_instance()?;
        }
        let mut input = std::mem::take(&mut self.input_ipc);
        encode_ipc_into(batch, &mut input)
            .map_err(|e| fail(format!("cannot encode input: {e}")))?;
        let limits = self.loaded.host.limits;
        arm(&mut self.store, limits);
        let (instance, store) = (&self.instance, &mut self.store);
        let started = std::time::Instant::now();
        let outcome = outside_async(|| match instance {
            Instance::Row(i) => i.call_transform(&mut *store, &input),
            Instance::Agg(i) => i.call_aggregate(&mut *store, &input),
        });
        self.keep_input_buffer(input);
        let component_name = component.display().to_string();
        let labels = [self.stage.as_str(), component_name.as_str()];
        let m = crate::observe::metrics();
        m.wasm_call_seconds
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        if outcome.is_err() {
            m.wasm_traps.with_label_values(&labels).inc();
        }
        let output = match outcome {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                let at = e.row.map(|r| format!("row {r}: ")).unwrap_or_default();
                return Err(fail(format!("{at}{}", e.message)));
            }
            Err(trap) => {
                self.trapped = true;
                return Err(fail(describe_trap(&trap, limits)));
            }
        };
        let output =
            decode_ipc(output).map_err(|e| fail(format!("returned invalid Arrow IPC: {e}")))?;
        self.release_grown_memory();
        Ok(output)
    }

    /// A linear memory never shrinks: one large batch would keep its peak resident for the
    /// instance's life. Past `RECYCLE_ABOVE_BYTES` the instance is replaced by a fresh one
    /// (instantiating and configuring takes under a millisecond), keeping its counts. A pipeline
    /// holds an instance per layer, and what each keeps between passes stacks with the next
    /// layer's peak: 16 MiB (instead of 64) took the freshness benchmark's peak RSS under overload
    /// from 1,466 to 1,202 MiB, while batches of 10,000 rows still reuse their instance.
    fn release_grown_memory(&mut self) {
        const RECYCLE_ABOVE_BYTES: usize = 16 << 20;
        if self.store.data().limits.memory_bytes <= RECYCLE_ABOVE_BYTES {
            return;
        }
        // The grown instance still works: on failure it is kept, and the next call tries again.
        if let Err(e) = self.replace_instance() {
            tracing::warn!(stage = %self.stage, error = %e, "could not replace a grown component instance");
        }
    }

    /// Keeps the input buffer for the next call, unless an unusually large batch grew it.
    fn keep_input_buffer(&mut self, input: Vec<u8>) {
        const KEEP_AT_MOST_BYTES: usize = 16 << 20;
        if input.capacity() <= KEEP_AT_MOST_BYTES {
            self.input_ipc = input;
        }
    }

    /// Starts a fresh instance of the component in place of this one, keeping the counts.
    fn replace_instance(&mut self) -> Result<()> {
        let mut fresh = self.loaded.instantiate(&self.stage, &self.config)?;
        fresh.store.data_mut().counters = std::mem::take(&mut self.store.data_mut().counters);
        fresh.input_ipc = std::mem::take(&mut self.input_ipc);
        *self = fresh;
        Ok(())
    }

    /// [`Self::call`], then `check(input, output)`: an output the layer cannot take (the reason
    /// `check` gives) fails the batch as a trap does, naming the component.
    pub fn call_checked(
        &mut self,
        batch: &RecordBatch,
        batch_label: &str,
        check: impl FnOnce(&RecordBatch, &RecordBatch) -> Option<String>,
    ) -> Result<RecordBatch> {
        let output = self.call(batch, batch_label)?;
        match check(batch, &output) {
            None => Ok(output),
            Some(cause) => Err(WasmError::Batch {
                stage: self.stage.clone(),
                component: self.loaded.path.clone(),
                batch: batch_label.to_owned(),
                cause,
            }),
        }
    }

    /// Counters the guest reported through `host.count` since the last call, which resets them.
    pub fn take_counters(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.store.data_mut().counters)
    }
}

/// Runs guest code, which may block: off the async scheduler when called from a Tokio worker.
///
/// WASI's synchronous bindings (what a guest's stdio or a panic message goes through) drive their
/// host side with `block_on`, which Tokio forbids on a worker thread unless it is marked blocking.
fn outside_async<R: Send>(guest: impl FnOnce() -> R + Send) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(guest)
        }
        // A current-thread runtime cannot lend its thread: the guest gets one of its own.
        Ok(_) => std::thread::scope(|s| {
            s.spawn(guest)
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }),
        Err(_) => guest(),
    }
}

/// Resets the per-call budgets: the epoch deadline and, if configured, the fuel.
fn arm(store: &mut Store<GuestState>, limits: WasmLimits) {
    let ticks = limits
        .timeout_ms
        .saturating_mul(TICKS_PER_SECOND)
        .div_ceil(1000)
        .max(1);
    store.set_epoch_deadline(ticks);
    if let Some(fuel) = limits.fuel {
        // Fuel is enabled in the engine exactly when configured, so this cannot fail.
        let _ = store.set_fuel(fuel);
    }
}

fn describe_trap(trap: &wasmtime::Error, limits: WasmLimits) -> String {
    match trap.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            format!("exceeded its time budget of {} ms", limits.timeout_ms)
        }
        Some(wasmtime::Trap::OutOfFuel) => {
            format!("ran out of fuel ({} units)", limits.fuel.unwrap_or(0))
        }
        _ => {
            // The cause alone: the wasm backtrace that wraps it means nothing to a pipeline's owner.
            let cause = trap.root_cause().to_string();
            tracing::debug!(trap = format!("{trap:#}"), "guest trap");
            if cause.contains("growing memory") || cause.contains("memory.grow") {
                format!(
                    "hit the memory limit of {} MiB ({cause})",
                    limits.memory_limit_bytes >> 20
                )
            } else {
                format!("trapped: {cause}")
            }
        }
    }
}

fn new_store(engine: &Engine, limits: WasmLimits, path: &Path) -> Store<GuestState> {
    // Nothing inherited: no preopened folders, no environment, no arguments, no network.
    let mut wasi = WasiCtx::builder();
    wasi.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if !limits.allow_clocks {
        wasi.wall_clock(StoppedClock).monotonic_clock(StoppedClock);
    }
    let state = GuestState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limits: MeasuredLimits {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_limit_bytes)
                .instances(4)
                .trap_on_grow_failure(true)
                .build(),
            memory_bytes: 0,
        },
        counters: BTreeMap::new(),
        component: path.display().to_string(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_trap();
    store
}

/// The store's limits, and how large the guest's linear memories have grown.
struct MeasuredLimits {
    limits: StoreLimits,
    memory_bytes: usize,
}

impl ResourceLimiter for MeasuredLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes += desired.saturating_sub(current);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The clocks a guest reads unless the pipeline allows real ones: always the Unix epoch (and 0 on
/// the monotonic clock).
struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MeasuredLimits,
    counters: BTreeMap<String, u64>,
    component: String,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl row::weir::transform::host::Host for GuestState {
    fn log(&mut self, level: row::weir::transform::host::Level, message: String) {
        use row::weir::transform::host::Level;
        let component = self.component.as_str();
        match level {
            Level::Trace => tracing::trace!(component, "{message}"),
            Level::Debug => tracing::debug!(component, "{message}"),
            Level::Info => tracing::info!(component, "{message}"),
            Level::Warn => tracing::warn!(component, "{message}"),
            Level::Error => tracing::error!(component, "{message}"),
        }
    }

    fn count(&mut self, name: String, delta: u64) {
        *self.counters.entry(name).or_default() += delta;
    }
}
impl row::weir::transform::types::Host for GuestState {}

/// Arrow IPC stream bytes for one batch: the format of every call across the boundary.
pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut out = Vec::new();
    encode_ipc_into(batch, &mut out)?;
    Ok(out)
}

/// [`encode_ipc`] into `out`, replacing what it held.
fn encode_ipc_into(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), arrow::error::ArrowError> {
    out.clear();
    out.reserve(batch.get_array_memory_size() + 1024);
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut *out, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()
}

/// Reads an Arrow IPC stream back into one batch (concatenating if the guest wrote several). The
/// arrays point into `bytes` where aligned; every array is validated, as it comes from a guest.
pub fn decode_ipc(bytes: Vec<u8>) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut buffer = arrow::buffer::Buffer::from(bytes);
    let mut decoder = arrow::ipc::reader::StreamDecoder::new();
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer)? {
            batches.push(batch);
        }
    }
    decoder.finish()?;
    let schema = decoder.schema().ok_or_else(|| {
        arrow::error::ArrowError::IpcError("the stream has no schema message".into())
    })?;
    match batches.len() {
        0 => Ok(RecordBatch::new_empty(schema)),
        1 => Ok(batches.remove(0)),
        _ => arrow::compute::concat_batches(&schema, &batches),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_versions_are_compatible_as_cargo_says() {
        assert_eq!(contract_version(), "0.1.0");
        assert!(semver_compatible("0.1.0", "0.1.3"));
        assert!(!semver_compatible("0.2.0", "0.1.0"));
        assert!(semver_compatible("1.2.0", "1.0.0"));
        assert!(!semver_compatible("2.0.0", "1.0.0"));
        assert!(!semver_compatible("(none)", "0.1.0"));
    }
}
