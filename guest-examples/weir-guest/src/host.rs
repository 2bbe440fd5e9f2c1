//! What the host lends a guest: logging and counters.
//!
//! In a component these call the WIT `host` imports. Natively (unit tests) they are recorded per
//! thread, and each test runs on its own thread, so [`counter`] and [`logs`] see only that test.

/// Severity of a [`log`] line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Emits a log line through the host's `tracing`, tagged with the component's name.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// Adds `delta` to the component's counter `name`. A zero delta is not sent.
pub fn count(name: &str, delta: u64) {
    if delta > 0 {
        imp::count(name, delta);
    }
}

/// The value of counter `name` recorded on this thread (native builds only).
#[cfg(not(target_family = "wasm"))]
pub fn counter(name: &str) -> u64 {
    imp::COUNTS.with(|counts| counts.borrow().get(name).copied().unwrap_or(0))
}

/// Every counter recorded on this thread (native builds only).
#[cfg(not(target_family = "wasm"))]
pub fn counters() -> std::collections::BTreeMap<String, u64> {
    imp::COUNTS.with(|counts| counts.borrow().clone())
}

/// The log lines recorded on this thread, oldest first (native builds only).
#[cfg(not(target_family = "wasm"))]
pub fn logs() -> Vec<(Level, String)> {
    imp::LOGS.with(|logs| logs.borrow().clone())
}

/// Forgets what this thread recorded (native builds only).
#[cfg(not(target_family = "wasm"))]
pub fn reset() {
    imp::COUNTS.with(|counts| counts.borrow_mut().clear());
    imp::LOGS.with(|logs| logs.borrow_mut().clear());
}

#[cfg(target_family = "wasm")]
mod imp {
    use super::Level;
    use crate::bindings::row_transform::weir::transform::host as wit;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }

    pub fn count(name: &str, delta: u64) {
        wit::count(name, delta);
    }
}

#[cfg(not(target_family = "wasm"))]
mod imp {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::Level;

    thread_local! {
        pub static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
        pub static COUNTS: RefCell<BTreeMap<String, u64>> = const { RefCell::new(BTreeMap::new()) };
    }

    pub fn log(level: Level, message: &str) {
        LOGS.with(|logs| logs.borrow_mut().push((level, message.to_owned())));
    }

    pub fn count(name: &str, delta: u64) {
        COUNTS.with(|counts| {
            let mut counts = counts.borrow_mut();
            let total = counts.entry(name.to_owned()).or_insert(0);
            *total = total.saturating_add(delta);
        });
    }
}

#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_zero_deltas_are_not_recorded() {
        count("rows", 2);
        count("rows", 3);
        count("empty", 0);
        assert_eq!(counter("rows"), 5);
        assert!(!counters().contains_key("empty"));
        reset();
        assert_eq!(counter("rows"), 0);
    }

    #[test]
    fn log_lines_are_kept_in_order() {
        log(Level::Info, "first");
        log(Level::Warn, "second");
        assert_eq!(
            logs(),
            vec![
                (Level::Info, "first".into()),
                (Level::Warn, "second".into())
            ]
        );
    }
}
