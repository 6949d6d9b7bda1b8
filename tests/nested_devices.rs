//! The kinds of device users pass through, each driven in L2 by its own Linux driver,
//! with the result checked from L0 (issue 9): an NVMe controller (MSI-X inside the
//! register BAR), an AHCI controller (MSI without MSI-X), a PCI UART (an I/O BAR,
//! INTx only), an ivshmem device with an 8 GiB 64-bit BAR, an SR-IOV virtual function
//! of an igb created in L1, both functions of a multifunction slot, and an endpoint
//! behind a PCIe root port.
//!
//! All run `resources/scenarios/pt-blk.sh` (bind every device to vfio-pci, one passvm);
//! most with the L2 check `resources/l2/checks/pt-dev.sh`, which drives each device by
//! kind and reports what it saw.

mod bed;

use std::time::Duration;

use bed::{Device, L1Kernel, Outcome, Scenario};

/// Where pt-dev writes two words through ivshmem's BAR 2: past 4 GiB.
const IVSHMEM_OFFSET: u64 = 6 * (1 << 30) + 4096;

fn pt_dev(devices: &[Device], params: &str) -> Outcome {
    let mut s = Scenario::new("pt-blk")
        .l1(L1Kernel::Own)
        .timeout(Duration::from_secs(420))
        .l1_append(&format!("passvm.pt.check=pt-dev {params}"));
    for d in devices {
        s = s.device(d.clone());
    }
    s.run()
}

/// passvm exited 0 after L2's check passed.
fn assert_l2_passed(out: &Outcome) {
    out.assert_ok();
    assert_eq!(out.markers("passvm_rc"), vec!["0"], "passvm exits 0");
    assert_eq!(out.l2_rc(), Some(0), "L2's pt-dev check passed");
}

/// The one passed-through device L2 sees: (BDF, vendor:device, driver).
fn l2_device(out: &Outcome) -> (String, String, String) {
    let drivers = out.l2_markers("driver");
    assert_eq!(drivers.len(), 1, "one device in L2: {drivers:?}");
    let w: Vec<&str> = drivers[0].split_whitespace().collect();
    assert_eq!(w.len(), 3, "{drivers:?}");
    (w[0].to_owned(), w[1].to_owned(), w[2].to_owned())
}

/// L2's one passed-through device has vendor:device `id`, is bound to `driver` and
/// interrupts in `mode` (msix, msi, intx).
fn assert_driven(out: &Outcome, id: &str, driver: &str, mode: &str) {
    let (bdf, got_id, got_driver) = l2_device(out);
    assert_eq!((got_id.as_str(), got_driver.as_str()), (id, driver));
    assert_eq!(irq_mode(out, &bdf), mode);
    assert_config_space_as_in_l1(out, &bdf);
}

/// Extended capabilities passvm hides (devices/src/vfio/device/mod.rs): ARI, SR-IOV,
/// Resizable BAR.
const HIDDEN_EXT_CAPS: [&str; 3] = ["000e", "0010", "0015"];

/// L2 sees the one device's config space at the size L1 sees it (4 KiB for a PCIe
/// function, through passvm's ECAM window), with L1's extended capabilities in L1's
/// order, less the hidden ones.
fn assert_config_space_as_in_l1(out: &Outcome, l2_bdf: &str) {
    let l1 = out.markers("l1_extcaps");
    assert_eq!(l1.len(), 1, "one device in L1: {l1:?}");
    let l1: Vec<&str> = l1[0].split_whitespace().skip(1).collect();
    let l2 = out
        .l2_markers("extcaps")
        .into_iter()
        .find_map(|m| m.strip_prefix(l2_bdf))
        .unwrap_or_else(|| panic!("no extcaps marker for {l2_bdf}"));
    let l2: Vec<&str> = l2.split_whitespace().collect();
    assert_eq!(
        l2.first(),
        l1.first(),
        "config space size, L2 {l2:?} vs L1 {l1:?}"
    );
    let expected: Vec<&str> = l1
        .iter()
        .skip(1)
        .copied()
        .filter(|id| !HIDDEN_EXT_CAPS.contains(id))
        .collect();
    assert_eq!(
        &l2[1..],
        expected.as_slice(),
        "extended capabilities, L1 {l1:?}"
    );
}

/// The interrupt mode L2's driver ended up with for `bdf` (msix, msi, intx).
fn irq_mode(out: &Outcome, bdf: &str) -> String {
    out.l2_markers("irqmode")
        .into_iter()
        .find_map(|m| m.strip_prefix(bdf).map(|r| r.trim().to_owned()))
        .unwrap_or_else(|| panic!("no irqmode marker for {bdf}"))
}

/// Total interrupts counted on L2's `/proc/interrupts` lines whose chip starts with
/// `chip` and whose name contains `name`.
fn irq_count(out: &Outcome, chip: &str, name: &str) -> u64 {
    out.l2_markers("irq")
        .into_iter()
        .filter_map(|m| {
            let w: Vec<&str> = m.split_whitespace().collect();
            let count: u64 = w.first()?.parse().ok()?;
            (w.get(1)?.starts_with(chip) && w.last()?.contains(name)).then_some(count)
        })
        .sum()
}

/// An NVMe controller: L2's nvme driver reads the header L0 wrote and writes through
/// an I/O queue, with MSI-X vectors whose table shares BAR 0 with the doorbells.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_devices -- --ignored"]
fn nvme_controller() {
    let out = pt_dev(&[Device::Nvme("n0".into())], "");
    assert_l2_passed(&out);
    assert_driven(&out, "0x1b36:0x0010", "nvme", "msix");
    assert!(
        out.l2_markers("disk").contains(&"nvme0n1 n0"),
        "L2 read the name L0 wrote: {:?}",
        out.l2_markers("disk")
    );
    assert!(out.l2_wrote("n0"), "L0's n0.img holds L2's line at 1 MiB");
    assert!(
        irq_count(&out, "PCI-MSIX", "nvme0q") > 0,
        "the queues interrupted through MSI-X: {:?}",
        out.l2_markers("irq")
    );
    // Host vectors follow the guest's use (issue 13): L1's /proc/interrupts never
    // showed more vfio-msix vectors for the controller than L2 requested, far fewer
    // than its table has.
    let used = out.l2_marker("msix_used").unwrap_or("");
    let w: Vec<u32> = used
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    assert!(
        w.len() == 2 && w[0] >= 2 && w[0] < w[1],
        "L2 uses a few of the table's vectors: {used:?}"
    );
    let host = out.markers("l1_msix");
    assert_eq!(
        host.len(),
        1,
        "one device with host MSI-X vectors: {host:?}"
    );
    let host_max: u32 = host[0]
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX);
    assert!(
        host_max >= 1 && host_max <= w[0],
        "{host_max} host vectors at most for {} used of {}",
        w[0],
        w[1]
    );
}

/// An AHCI controller (MSI with one vector, no MSI-X; an I/O BAR beside the AHCI
/// registers): L2's ahci driver reads and writes its SATA disk.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_devices -- --ignored"]
fn ahci_controller_with_msi_only() {
    let out = pt_dev(&[Device::Ahci("s0".into())], "");
    assert_l2_passed(&out);
    assert_driven(&out, "0x8086:0x2922", "ahci", "msi");
    assert!(
        out.l2_markers("disk").contains(&"sda s0"),
        "{:?}",
        out.l2_markers("disk")
    );
    assert!(out.l2_wrote("s0"), "L0's s0.img holds L2's line at 1 MiB");
    assert!(
        irq_count(&out, "PCI-MSI", "ahci") > 0,
        "the controller interrupted through MSI: {:?}",
        out.l2_markers("irq")
    );
}

/// A PCI 16550 (one I/O BAR, INTx only): L2's 8250_pci registers it and what L2
/// writes to its tty arrives in L0's chardev file, the transmitter interrupts coming
/// through the level-triggered IOAPIC line.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_devices -- --ignored"]
fn pci_uart_with_an_io_bar_and_intx() {
    // 8250.nr_uarts=2: a slot for the PCI port beside the console.
    let out = pt_dev(
        &[Device::Serial("u0".into())],
        "passvm.pt.l2=8250.nr_uarts=2",
    );
    assert_l2_passed(&out);
    assert_driven(&out, "0x1b36:0x0002", "serial", "intx");
    let uarts = out.l2_markers("uart");
    assert_eq!(uarts.len(), 1, "{uarts:?}");
    let tty = uarts[0].split_whitespace().nth(1).unwrap_or_default();
    let sent = String::from_utf8_lossy(&out.file("u0.out", 0, 4096)).into_owned();
    assert!(
        sent.contains(&format!("PASSVM-L2-UART tty={tty}")),
        "L0's u0.out has L2's line: {sent:?}"
    );
    assert!(
        irq_count(&out, "IO-APIC", tty) > 0,
        "{tty} interrupted through INTx: {:?}",
        out.l2_markers("irq")
    );
}

/// ivshmem-plain with an 8 GiB 64-bit BAR: the whole BAR is mapped into L2, and two
/// words L2 writes 6 GiB into it are in L0's backing file at that offset.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_devices -- --ignored"]
fn ivshmem_with_an_8_gib_bar() {
    let out = pt_dev(&[Device::Ivshmem("m0".into())], "");
    assert_l2_passed(&out);
    let (_, id, _) = l2_device(&out);
    assert_eq!(id, "0x1af4:0x1110");
    let m = out.l2_marker("ivshmem").unwrap_or_default();
    let w: Vec<&str> = m.split_whitespace().collect();
    assert_eq!(w.get(1), Some(&"8589934592"), "BAR 2 is 8 GiB in L2: {m}");
    let base =
        u64::from_str_radix(w.get(2).unwrap_or(&"0").trim_start_matches("0x"), 16).unwrap_or(0);
    assert!(base >= 1 << 32, "a 64-bit BAR above 4 GiB: {m}");
    assert_eq!(
        out.file("m0.shm", IVSHMEM_OFFSET, 8),
        b"PVM-L2OK",
        "L0's m0.shm holds what L2 wrote through the BAR"
    );
}

/// Ethernet frames in a pcap file (QEMU's filter-dump: classic pcap, Ethernet).
fn pcap_frames(pcap: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    if pcap.len() < 24 || pcap[..4] != 0xa1b2_c3d4u32.to_le_bytes() {
        return frames;
    }
    let mut at = 24;
    while let Some(h) = pcap.get(at..at + 16) {
        let caplen = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let Some(frame) = pcap.get(at + 16..at + 16 + caplen) else {
            break;
        };
        frames.push(frame);
        at += 16 + caplen;
    }
    frames
}

/// The ICMP type of an Ethernet/IPv4/ICMP frame from `src` to `dst` (MACs, either
/// may be `None` for any), if it is one.
fn icmp_type(frame: &[u8], src: Option<&[u8]>, dst: Option<&[u8]>) -> Option<u8> {
    let (d, s, ether) = (frame.get(0..6)?, frame.get(6..12)?, frame.get(12..14)?);
    if ether != [0x08, 0x00] || src.is_some_and(|m| m != s) || dst.is_some_and(|m| m != d) {
        return None;
    }
    let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
    (*frame.get(23)? == 1).then(|| frame.get(14 + ihl).copied())?
}

fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

/// An SR-IOV virtual function: L1's igb creates it on L0's emulated 82576 (with the
/// PF's interface up, without which the VF stays "PF still in reset state"), passvm
/// passes it, L2's igbvf brings it up and pings QEMU's user-network gateway; L0's
/// capture has the echo requests from the VF's MAC and the replies to it.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_devices -- --ignored"]
fn sriov_virtual_function_of_an_igb() {
    let out = pt_dev(&[Device::Igb("pf0".into())], "passvm.pt.vf=1");
    assert_l2_passed(&out);
    let vf = out.marker("vf").unwrap_or_default();
    assert!(
        vf.starts_with("0000:01:00.0 0000:01:"),
        "a VF of the PF: {vf}"
    );
    assert_driven(&out, "0x8086:0x10ca", "igbvf", "msix");
    let ping = out.l2_marker("ping").unwrap_or_default();
    let w: Vec<&str> = ping.split_whitespace().collect();
    assert_eq!(w.len(), 3, "{ping}");
    assert!(w[2].parse::<u32>().unwrap_or(0) > 0, "replies came: {ping}");
    let mac = mac_bytes(w[1]);
    assert_eq!(mac.len(), 6, "{ping}");
    let pcap = out.file("pf0.pcap", 0, 1 << 20);
    let frames = pcap_frames(&pcap);
    let requests = frames
        .iter()
        .filter(|f| icmp_type(f, Some(&mac), None) == Some(8))
        .count();
    let replies = frames
        .iter()
        .filter(|f| icmp_type(f, None, Some(&mac)) == Some(0))
        .count();
    assert!(
        requests > 0 && replies > 0,
        "L0 saw {requests} echo requests from {} and {replies} replies to it in {} frames",
        w[1],
        frames.len()
    );
}

/// Both functions of a multifunction slot (one IOMMU group of two) passed to one
/// guest, as one slot with both functions: L2's virtio driver reads and writes each disk.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_devices -- --ignored"]
fn both_functions_of_a_multifunction_slot() {
    let out = pt_dev(&[Device::blk_multifunction("mfa", "mfb")], "");
    assert_l2_passed(&out);
    let groups: Vec<&str> = out
        .markers("bound")
        .into_iter()
        .filter_map(|b| b.split_whitespace().nth(1))
        .collect();
    assert_eq!(groups.len(), 2, "both functions bound");
    assert_eq!(groups[0], groups[1], "one group: {groups:?}");
    let drivers = out.l2_markers("driver");
    assert_eq!(drivers.len(), 2, "two devices in L2: {drivers:?}");
    assert!(
        drivers.iter().all(|d| d.ends_with(" virtio-pci")),
        "{drivers:?}"
    );
    // One guest slot, the host's function numbers, as on the host.
    let bdfs: Vec<&str> = drivers
        .iter()
        .filter_map(|d| d.split_whitespace().next())
        .collect();
    assert_eq!(bdfs, ["0000:00:01.0", "0000:00:01.1"], "{drivers:?}");
    for d in ["mfa", "mfb"] {
        assert!(out.l2_wrote(d), "L0's {d}.img holds L2's line at 1 MiB");
    }
}

/// A PCIe endpoint behind a root port (bus 1 in L1, with FLR): passed, driven, and
/// reset on the way in and out.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_devices -- --ignored"]
fn endpoint_behind_a_pcie_root_port() {
    let out = pt_dev(&[Device::blk_root_port("rp0")], "");
    assert_l2_passed(&out);
    let bound = out.marker("bound").unwrap_or_default();
    assert!(bound.starts_with("0000:01:00.0 "), "{bound}");
    let (bdf, _, driver) = l2_device(&out);
    assert_eq!(driver, "virtio-pci");
    assert_eq!(irq_mode(&out, &bdf), "msix");
    assert!(out.l2_wrote("rp0"), "L0's rp0.img holds L2's line at 1 MiB");
}

#[test]
fn pcap_frames_and_icmp_types_are_read() {
    let mac = [0x52, 0x54, 0, 1, 2, 3];
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x08, 0x00, 0x45]);
    frame.extend_from_slice(&[0; 8]);
    frame.push(1); // protocol: ICMP
    frame.extend_from_slice(&[0; 10]);
    frame.push(8); // echo request
    frame.extend_from_slice(&[0; 7]);
    let mut pcap = 0xa1b2_c3d4u32.to_le_bytes().to_vec();
    pcap.extend_from_slice(&[0; 20]);
    for _ in 0..2 {
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        pcap.extend_from_slice(&frame);
    }
    // A truncated third record is not a frame.
    pcap.extend_from_slice(&[0; 10]);
    let frames = pcap_frames(&pcap);
    assert_eq!(frames.len(), 2);
    assert_eq!(icmp_type(frames[0], Some(&mac), None), Some(8));
    assert_eq!(
        icmp_type(frames[0], None, Some(&mac)),
        None,
        "not to that MAC"
    );
    assert!(pcap_frames(b"not a pcap").is_empty());
}

/// L0's ROM image for a `BlkRom` device: what `bed.sh`'s make_rom writes (6 KiB).
const ROM_LEN: usize = 6144;

/// A device with an expansion ROM (a valid option ROM image L0 attached): L2 reads it
/// through passvm's ROM BAR, byte for byte what L1 reads from the device and what L0
/// wrote.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_devices -- --ignored"]
fn expansion_rom_reads_in_l2_as_in_l1() {
    let out = pt_dev(&[Device::BlkRom("r0".into())], "");
    assert_l2_passed(&out);
    assert_driven(&out, "0x1af4:0x1042", "virtio-pci", "msix");
    let rom = out.file("r0.rom", 0, ROM_LEN);
    assert_eq!(rom.len(), ROM_LEN, "L0's image");
    let head: String = rom[..4].iter().map(|b| format!("{b:02x}")).collect();
    let l1 = out.marker("l1_rom").expect("L1 read the device's ROM");
    let l1: Vec<&str> = l1.split_whitespace().skip(1).collect();
    assert_eq!(l1.len(), 3, "{l1:?}");
    assert_eq!(l1[0], ROM_LEN.to_string(), "L1 read the whole image");
    assert_eq!(l1[2], head, "L1 read L0's bytes");
    let l2 = out.l2_marker("rom").expect("L2 has a ROM BAR");
    let l2: Vec<&str> = l2.split_whitespace().skip(1).collect();
    assert_eq!(l2, l1, "L2 reads what L1 reads: size, MD5, first bytes");
}

/// `rombar=off` hides the same ROM from L2, which then has no `rom` file.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_devices -- --ignored"]
fn rombar_off_hides_the_rom() {
    let out = pt_dev(
        &[Device::BlkRom("r0".into())],
        "passvm.pt.devopts=rombar=off",
    );
    assert_l2_passed(&out);
    assert!(out.marker("l1_rom").is_some(), "L1 sees the ROM");
    assert_eq!(out.l2_marker("rom"), None, "L2 does not");
}
