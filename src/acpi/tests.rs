use super::*;

fn inputs(vcpus: u8) -> AcpiInputs {
    AcpiInputs {
        vcpus,
        ioapic_id: vcpus,
        dsdt: DsdtInputs {
            io_window: (0xc000, 0xffff),
            mmio32: (0xc000_0000, 0xfebf_ffff),
            mmio64: (0x40_0000_0000, 0x7f_ffff_ffff),
            intx_gsi: |slot| 16 + u32::from(slot) % 8,
            ecam: (0xf000_0000, 16),
            power_button_gsi: 5,
        },
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// The table at `addr` among the built ones.
fn at(tables: &[(u64, Vec<u8>)], addr: u64) -> &[u8] {
    &tables
        .iter()
        .find(|(a, _)| *a == addr)
        .unwrap_or_else(|| panic!("no table at {addr:#x}"))
        .1
}

#[test]
fn every_table_sums_to_zero_has_its_length_and_is_reachable_from_the_rsdp() {
    let t = build(&inputs(2)).unwrap();
    let (rsdp_at, rsdp) = &t[0];
    assert_eq!(*rsdp_at, RSDP_START);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(sum(rsdp), 0, "extended checksum");
    assert_eq!(rsdp.len(), 36);
    let xsdt = at(&t, u64_at(rsdp, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    let mut sigs = Vec::new();
    for i in 0..(xsdt.len() - 36) / 8 {
        let table = at(&t, u64_at(xsdt, 36 + 8 * i));
        sigs.push(String::from_utf8_lossy(&table[..4]).into_owned());
    }
    assert_eq!(sigs, ["FACP", "APIC", "MCFG"]);
    let fadt = at(&t, u64_at(xsdt, 36));
    let dsdt = at(&t, u64_at(fadt, 140));
    assert_eq!(&dsdt[..4], b"DSDT");
    for (addr, table) in &t[1..] {
        assert_eq!(
            u32_at(table, 4) as usize,
            table.len(),
            "length of {addr:#x}"
        );
        assert_eq!(
            sum(table),
            0,
            "checksum of {:?}",
            String::from_utf8_lossy(&table[..4])
        );
        assert_eq!(addr % 16, 0);
        assert!(*addr + table.len() as u64 <= ACPI_END);
    }
}

#[test]
fn the_fadt_is_hardware_reduced_without_an_8042_and_points_at_the_power_ports() {
    let t = build(&inputs(1)).unwrap();
    let xsdt = at(&t, u64_at(&t[0].1, 24));
    let fadt = at(&t, u64_at(xsdt, 36));
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
    assert_ne!(flags & Flags::ResetRegSup as u32, 0);
    let iapc = u16::from_le_bytes([fadt[109], fadt[110]]);
    assert_eq!(iapc & IAPC_8042, 0, "no keyboard controller to probe");
    assert_eq!(iapc & IAPC_MSI_NOT_SUPPORTED, 0, "MSIs work");
    assert_ne!(iapc & IAPC_VGA_NOT_PRESENT, 0);
    // RESET_REG (GAS at 116): system I/O, 8 bits, at the reset port; RESET_VALUE at 128.
    assert_eq!(fadt[116], 1);
    assert_eq!(fadt[117], 8);
    assert_eq!(u64_at(fadt, 120), POWER_BASE + RESET);
    assert_eq!(fadt[128], RESET_VALUE);
    // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
    assert_eq!(
        (fadt[244], u64_at(fadt, 248)),
        (1, POWER_BASE + SLEEP_CONTROL)
    );
    assert_eq!(
        (fadt[256], u64_at(fadt, 260)),
        (1, POWER_BASE + SLEEP_STATUS)
    );
    assert_eq!(fadt.len(), 276, "ACPI 6.5 FADT");
}

#[test]
fn the_madt_lists_every_vcpu_and_the_ioapic() {
    let t = build(&inputs(3)).unwrap();
    let xsdt = at(&t, u64_at(&t[0].1, 24));
    let madt = at(&t, u64_at(xsdt, 44));
    assert_eq!(u32_at(madt, 36), LAPIC_START as u32);
    let mut off = 44;
    let (mut lapics, mut ioapics) = (Vec::new(), Vec::new());
    while off < madt.len() {
        let (kind, len) = (madt[off], usize::from(madt[off + 1]));
        match kind {
            0 => lapics.push((madt[off + 2], madt[off + 3], u32_at(madt, off + 4))),
            1 => ioapics.push((madt[off + 2], u32_at(madt, off + 4), u32_at(madt, off + 8))),
            k => panic!("unexpected MADT structure {k}"),
        }
        off += len;
    }
    assert_eq!(lapics, [(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
    assert_eq!(ioapics, [(3, IOAPIC_START as u32, 0)]);
}

#[test]
fn the_dsdt_carries_the_s5_package_and_the_devices() {
    let t = build(&inputs(1)).unwrap();
    let xsdt = at(&t, u64_at(&t[0].1, 24));
    let fadt = at(&t, u64_at(xsdt, 36));
    let dsdt = at(&t, u64_at(fadt, 140));
    let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
    for name in [&b"_S5_"[..], b"PCI0", b"_PRT", b"_OSC", b"_CRS", b"COM1"] {
        assert!(has(name), "{}", String::from_utf8_lossy(name));
    }
    // 31 slots x 4 pins: the _PRT package's element count (PackageOp, PkgLength, count).
    let prt = dsdt.windows(4).position(|w| w == b"_PRT").unwrap();
    assert_eq!(dsdt[prt + 4], 0x12, "a package follows _PRT");
    let len_bytes = 1 + usize::from(dsdt[prt + 5] >> 6);
    assert_eq!(dsdt[prt + 5 + len_bytes], 31 * 4);
    assert_eq!(
        dsdt[8], DSDT_REVISION,
        "64-bit integers for the 64-bit window"
    );
}

#[test]
fn the_tables_fit_below_1_mib_and_land_in_guest_ram() {
    let mem = crate::memory::create_guest_memory(64 << 20, false).unwrap();
    let rsdp = write(&mem, &inputs(2)).unwrap();
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
    assert_eq!(&sig, b"RSD PTR ");
    let t = build(&inputs(254)).unwrap();
    let end = t.iter().map(|(a, b)| a + b.len() as u64).max().unwrap();
    assert!(end <= ACPI_END, "254 vCPUs fit: {end:#x}");
}

/// The DSDT disassembles without errors and says what the layout says.
#[test]
#[cfg_attr(
    passvm_no_iasl,
    ignore = "needs iasl (acpica-tools; resources/setup.sh installs it), absent when built"
)]
fn iasl_disassembles_the_dsdt_into_the_layouts_windows() {
    let t = build(&inputs(2)).unwrap();
    let xsdt = at(&t, u64_at(&t[0].1, 24));
    let fadt = at(&t, u64_at(xsdt, 36));
    let dsdt = at(&t, u64_at(fadt, 140));
    let dir = tempfile::tempdir().unwrap();
    let aml = dir.path().join("dsdt.aml");
    std::fs::write(&aml, dsdt).unwrap();
    let out = std::process::Command::new("iasl")
        .arg("-d")
        .arg(&aml)
        .output()
        .expect("iasl (present when built)");
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
    for want in [
        "Name (\\_S5, Package (0x04)",
        "Device (PCI0)",
        "Name (_HID, EisaId (\"PNP0A08\")",
        "Name (_CID, EisaId (\"PNP0A03\")",
        "Method (_OSC, 4, NotSerialized)",
        "ToUUID (\"33db4d5b-1ff7-401c-9657-7441c03dd766\")",
        "0xC000,             // Range Minimum",
        "0xFFFF,             // Range Maximum",
        "0xC0000000,         // Range Minimum",
        "0xFEBFFFFF,         // Range Maximum",
        "0x0000004000000000, // Range Minimum",
        "0x0000007FFFFFFFFF, // Range Maximum",
        "0x0CF8,             // Range Minimum",
        "Device (COM1)",
        "EisaId (\"PNP0501\")",
        "0x03F8,             // Range Minimum",
        "EisaId (\"PNP0C02\")",
        "Memory32Fixed (ReadOnly,\n                    0xF0000000,         // Address Base\n                    0x01000000,         // Address Length",
        "0x000F,             // Range Maximum",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "Device (PWRB)",
        "EisaId (\"PNP0C0C\")",
        "Device (GED)",
        "Name (_HID, \"ACPI0013\" /* Generic Event Device */)",
        "Method (_EVT, 1, NotSerialized)",
        "If ((Arg0 == 0x05))",
        "Notify (\\_SB.PWRB, 0x80)",
        "0x0001FFFF,",
        "0x001FFFFF,",
    ] {
        assert!(dsl.contains(want), "missing {want:?} in\n{dsl}");
    }
    assert!(!dsl.contains("Error"), "{dsl}");
}

#[test]
fn the_mcfg_describes_the_ecam_window_of_segment_0() {
    let t = build(&inputs(1)).unwrap();
    let xsdt = at(&t, u64_at(&t[0].1, 24));
    let mcfg = at(&t, u64_at(xsdt, 52));
    assert_eq!(&mcfg[..4], b"MCFG");
    // One 16-byte allocation after the 44-byte header: base, segment, first and last bus.
    assert_eq!(mcfg.len(), 44 + 16);
    assert_eq!(u64_at(mcfg, 44), 0xf000_0000);
    assert_eq!(u16::from_le_bytes([mcfg[52], mcfg[53]]), 0);
    assert_eq!((mcfg[54], mcfg[55]), (0, 15));
}
