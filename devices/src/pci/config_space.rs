//! PCI config space helpers (OWNER: passthrough helper).
