//! PCI bar helpers (OWNER: passthrough helper).
