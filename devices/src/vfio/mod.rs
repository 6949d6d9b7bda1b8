//! VFIO: from a `--device` string to a device the guest drives.
//!
//! OWNER of this file: passthrough helper (add your modules here). `naming` and
//! `discovery` belong to the discovery helper.

pub mod discovery;
pub mod naming;
