//! The PCI host bridge on the 0xCF8/0xCFC config mechanism (OWNER: VMM-core helper).
