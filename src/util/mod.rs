//! Plain helpers with no knowledge of the edge: atomic files, time, token buckets, tasks,
//! error chains. Nothing here imports another module of the crate.

pub mod bucket;
pub mod error;
pub mod fs;
pub mod ports;
pub mod task;
pub mod time;
