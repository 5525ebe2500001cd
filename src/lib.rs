//! storegc: a Nix store garbage-collection policy engine.
//!
//! Data flows one way: the store database ([`db`]) and the GC roots
//! ([`roots`]) go into the liveness [`graph`]; the [`plan`] says which paths
//! may go and why. Only `apply` deletes. The middle (graph, plan) touches no
//! file system, clock or terminal.

pub mod apply;
pub mod cli;
pub mod commands;
pub mod db;
pub mod deadsince;
pub mod dominators;
pub mod exit;
pub mod explain;
pub mod flock;
pub mod graph;
pub mod load;
pub mod metrics;
pub mod paths;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod report;
pub mod roots;
pub mod settings;
pub mod store_path;
pub mod synth;
