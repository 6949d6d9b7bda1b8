//! PCI caps helpers (OWNER: passthrough helper).
