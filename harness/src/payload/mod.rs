//! What travels inside a task's data section, in every encoding the protocol uses:
//! - `pickle`: Python values (our own codec: serde-pickle cannot read CPython's pickles), the RDD
//!   serializers' frame layouts (batched, auto-batched, pairs, cartesian, textFile UTF-8 lines
//!   and NULL), and the JVM's Pyrolite rows for pickled SQL UDFs;
//! - `arrow`: Arrow IPC streams through arrow-rs, in the framings of the Arrow UDF kinds, read
//!   back to rows;
//! - `sqltype`: Spark SQL types from DDL, as Spark's JSON and as Arrow types.
//!
//! The crate root re-exports the three, so `crate::pickle` names `crate::payload::pickle`.

pub mod arrow;
pub mod pickle;
pub mod sqltype;
