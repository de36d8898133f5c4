//! The adaptive vibration-anomaly scenario (`examples/sensor.rs`, README
//! "Sensor anomaly detection"): a simulated fleet of machines ([`sim`]),
//! training on normal readings and streaming surprise scores ([`run`]),
//! classical baselines ([`baselines`]), detection metrics ([`metrics`])
//! and the plot of a stream ([`plot`]).
//!
//! The parts are written here rather than taken from crates: the
//! simulator is the scenario itself, and the metrics (AUROC with ties,
//! event-level alarms) are a few lines each, tested against hand-computed
//! cases.

pub mod baselines;
pub mod metrics;
pub mod plot;
pub mod run;
pub mod sim;
