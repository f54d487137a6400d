#![warn(unreachable_pub)]
//! fakejvm: plays Spark's JVM side of the PythonRDD pipe protocol against real pyspark workers.
//!
//! Data flows one way through these modules, top to bottom: a scenario (or golden, or fuzz case)
//! becomes a typed request, the request becomes bytes on a socket to a real worker, and the
//! worker's reply becomes one typed verdict.
pub mod atomic;
pub mod bench;
pub mod decode;
pub mod doctor;
pub mod error;
pub mod faults;
pub mod fuzz;
pub mod golden;
pub mod junit;
pub mod matrix;
pub mod merge;
pub mod outputs;
pub mod payload;
pub mod protocol;
pub mod pyenv;
pub mod report;
pub mod repro;
pub mod scenario;
pub mod session;
pub mod shard;
pub mod verdict;
pub mod wire;
pub mod worker;

pub use payload::{arrow, pickle, sqltype};
