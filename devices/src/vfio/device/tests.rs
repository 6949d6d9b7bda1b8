use super::*;
use crate::pci::bar::{Window, DEFAULT_MMIO64_LIMIT};
use crate::pci::MsiMessage;
use crate::vfio::device_fd::{HotReset, IrqInfo, MmapArea, RegionInfo};
use crate::vfio::iommu::{DmaGate, DmaReport};
use crate::vfio::testing::{DevCall, FakeDevice, RecordingVm, VmCall};
use crate::vfio::vm::AddressSpace;

const RW_MMAP: u32 = 0x7;

fn put32(cfg: &mut [u8], off: usize, v: u32) {
    cfg[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// A PCIe endpoint: BAR0/1 64-bit prefetchable 64 KiB with the MSI-X table at 0x2000
/// and PBA at 0x3000; BAR2 I/O 32 bytes; BAR3 32-bit 256 bytes; a ROM; MSI (64-bit,
/// per-vector mask) at 0x50, MSI-X (4 vectors) at 0x70, PCIe at 0x90; SR-IOV hidden
/// at 0x100 between nothing and AER at 0x140.
/// A function with every capability the model handles (MSI, MSI-X, PCIe, SR-IOV, AER),
/// three BARs and a ROM: what the other unit tests of `vfio` build on.
pub(crate) fn fake() -> FakeDevice {
    let mut cfg = vec![0u8; 4096];
    put32(&mut cfg, 0, 0x1001_1af4);
    put32(&mut cfg, 4, 0x0010_0000); // status: capability list
    cfg[HEADER_TYPE] = 0x80; // multi-function on the host
    put32(&mut cfg, 0x10, 0x0000_000c);
    put32(&mut cfg, 0x18, 0x0000_0001);
    put32(&mut cfg, 0x1c, 0x0000_0000);
    put32(&mut cfg, 0x30, 0xfeb8_0000);
    cfg[0x34] = 0x50;
    cfg[INTERRUPT_PIN] = 1;
    put32(&mut cfg, 0x50, 0x0180_7005); // MSI, next 0x70, 64-bit + PVM
    put32(&mut cfg, 0x70, 0x0003_9011); // MSI-X, next 0x90, 4 entries
    put32(&mut cfg, 0x74, 0x2000);
    put32(&mut cfg, 0x78, 0x3000);
    put32(&mut cfg, 0x90, 0x0002_0010); // PCIe
    put32(&mut cfg, 0x100, 0x1401_0010); // SR-IOV -> 0x140
    put32(&mut cfg, 0x140, 0x0001_0001); // AER, end
    let mut d = FakeDevice::new(cfg);
    let reg = |size, flags, offset| RegionInfo {
        flags,
        size,
        offset,
        ..Default::default()
    };
    d.add_region(0, reg(0x10000, RW_MMAP, 0), vec![0x5a; 0x10000]);
    d.add_region(2, reg(0x20, 0x3, 0x10000), vec![0x11; 0x20]);
    d.add_region(3, reg(0x100, RW_MMAP, 0x11000), vec![0x22; 0x100]);
    d.add_region(6, reg(0x8000, 0x1, 0x12000), vec![0x55; 0x8000]);
    d.irqs
        .insert(IrqIndex::Intx, IrqInfo { flags: 7, count: 1 });
    d.irqs.insert(IrqIndex::Msi, IrqInfo { flags: 9, count: 1 });
    d.irqs
        .insert(IrqIndex::Msix, IrqInfo { flags: 9, count: 4 });
    d
}

fn allocator() -> BarAllocator {
    BarAllocator::new(
        Some(Window {
            base: 0xc000_0000,
            size: 0x1000_0000,
        }),
        Some(Window {
            base: 1 << 35,
            size: 1 << 35,
        }),
        Some(Window {
            base: 0xc000,
            size: 0x1000,
        }),
        DEFAULT_MMIO64_LIMIT,
    )
}

/// The model of `d` on a recording VM, its traps on the VM's buses.
pub(crate) fn build(d: FakeDevice) -> (VfioPciDevice, Arc<FakeDevice>, Arc<RecordingVm>) {
    build_with_dma(d, None)
}

fn build_with_dma(
    d: FakeDevice,
    dma: Option<Arc<DmaGate>>,
) -> (VfioPciDevice, Arc<FakeDevice>, Arc<RecordingVm>) {
    let d = Arc::new(d);
    let vm = Arc::new(RecordingVm::new());
    let mut a = allocator();
    let ctx = DeviceContext {
        rom: crate::vfio::device::RomImage::FromDevice,
        multifunction: false,
        vm: vm.clone(),
        routing: vm.clone(),
        bars: &mut a,
        intx_gsi: Some(10),
        dma,
    };
    let dev = VfioPciDevice::new("test", d.clone(), ctx).unwrap();
    vm.insert_traps(&dev.trapped_ranges());
    (dev, d, vm)
}

fn w(dev: &mut VfioPciDevice, off: usize, v: u32) {
    dev.write_config(off, 0, &v.to_le_bytes());
}

#[test]
fn bars_are_placed_sized_and_encoded() {
    let (mut dev, _d, _vm) = build(fake());
    let bar0 = dev.read_config(0x10);
    assert_eq!(bar0 & 0xf, 0xc, "64-bit prefetchable kept");
    let addr0 = (bar0 & !0xf) as u64 | ((dev.read_config(0x14) as u64) << 32);
    assert!(
        addr0 >= 1 << 35 && addr0 % 0x10000 == 0,
        "64-bit window, naturally aligned"
    );
    w(&mut dev, 0x10, 0xffff_ffff);
    w(&mut dev, 0x14, 0xffff_ffff);
    assert_eq!(dev.read_config(0x10), 0xffff_000c);
    assert_eq!(dev.read_config(0x14), 0xffff_ffff);
    assert_eq!(dev.read_config(0x18) & 0x3, 0x1, "I/O BAR");
    assert!((0xc000..0xd000).contains(&(dev.read_config(0x18) & !0x3)));
    w(&mut dev, 0x18, 0xffff_ffff);
    assert_eq!(dev.read_config(0x18), 0xffff_ffe1, "32 bytes of ports");
    let bar3 = dev.read_config(0x1c);
    assert_eq!(bar3 & 0xf, 0, "32-bit non-prefetchable");
    assert_eq!(bar3 % 4096, 0, "a sub-page BAR still owns a page");
    assert_eq!(dev.read_config(0x20), 0, "unimplemented BAR4");
    w(&mut dev, 0x20, 0xffff_ffff);
    assert_eq!(dev.read_config(0x20), 0);
    w(&mut dev, 0x30, 0xffff_ffff);
    assert_eq!(
        dev.read_config(0x30),
        0xffff_8001,
        "the 32 KiB ROM sizes like a ROM BAR"
    );
}

fn build_with_rom(rom: RomImage) -> (VfioPciDevice, Arc<RecordingVm>) {
    let d = Arc::new(fake());
    let vm = Arc::new(RecordingVm::new());
    let mut a = allocator();
    let ctx = DeviceContext {
        rom,
        multifunction: false,
        vm: vm.clone(),
        routing: vm.clone(),
        bars: &mut a,
        intx_gsi: Some(10),
        dma: None,
    };
    let dev = VfioPciDevice::new("test", d, ctx).unwrap();
    vm.insert_traps(&dev.trapped_ranges());
    (dev, vm)
}

#[test]
fn the_rom_decodes_only_while_enabled_with_memory_decode_and_reads_the_region() {
    let (mut dev, vm) = build_with_rom(RomImage::FromDevice);
    let rom = dev.read_config(0x30);
    assert_eq!(rom & 1, 0, "disabled after reset");
    let addr = u64::from(rom & 0xffff_f800);
    assert!(
        (0xc000_0000..0xd000_0000).contains(&addr) && addr % 0x8000 == 0,
        "{addr:#x}"
    );
    assert!(!dev.trapped_ranges().iter().any(|r| r.1 == addr));
    vm.clear();
    w(&mut dev, 0x30, rom | 1);
    assert!(vm.calls().is_empty(), "memory decode still off");
    dev.write_config(COMMAND, 0, &[0x02]);
    assert!(
        vm.calls()
            .contains(&VmCall::Trap(AddressSpace::Mmio, addr, 0x8000)),
        "{:?}",
        vm.calls()
    );
    let mut b = [0u8; 4];
    BusDevice::read(&mut dev, addr, 0x10, &mut b);
    assert_eq!(b, [0x55; 4], "the device's ROM bytes");
    BusDevice::write(&mut dev, addr, 0x10, &[0; 4]);
    BusDevice::read(&mut dev, addr, 0x10, &mut b);
    assert_eq!(b, [0x55; 4], "a ROM ignores writes");
    BusDevice::read(&mut dev, addr, 0x7ffe, &mut b);
    assert_eq!(b, [0xff; 4], "past the end");
    vm.clear();
    w(&mut dev, 0x30, rom);
    assert_eq!(
        vm.calls(),
        [VmCall::Untrap(AddressSpace::Mmio, addr)],
        "disabled again"
    );
    BusDevice::read(&mut dev, addr, 0x10, &mut b);
    assert_eq!(b, [0xff; 4], "no decode, no answer");
    // A reboot puts it back, disabled, where it was.
    w(&mut dev, 0x30, 0xd000_0001);
    dev.reset();
    assert_eq!(dev.read_config(0x30), rom);
}

#[test]
fn rombar_off_hides_the_rom_and_romfile_serves_the_image() {
    let (mut dev, _) = build_with_rom(RomImage::Hidden);
    w(&mut dev, 0x30, 0xffff_ffff);
    assert_eq!(dev.read_config(0x30), 0, "no ROM BAR");

    let image: Arc<[u8]> = (0..3000u32).map(|i| i as u8).collect::<Vec<u8>>().into();
    let (mut dev, _) = build_with_rom(RomImage::Bytes(image));
    w(&mut dev, 0x30, 0xffff_f800);
    assert_eq!(
        dev.read_config(0x30),
        0xffff_f000,
        "3000 bytes: a 4 KiB ROM BAR"
    );
    w(&mut dev, 0x30, 0xc800_0001);
    dev.write_config(COMMAND, 0, &[0x02]);
    let mut b = [0u8; 4];
    BusDevice::read(&mut dev, 0xc800_0000, 0x100, &mut b);
    assert_eq!(b, [0, 1, 2, 3], "the file's bytes, not the device's");
    BusDevice::read(&mut dev, 0xc800_0000, 2998, &mut b);
    assert_eq!(b, [0xb6, 0xb7, 0xff, 0xff], "0xff past the image");
}

#[test]
fn config_shadowing_rules() {
    let (mut dev, d, _vm) = build(fake());
    assert_eq!(dev.read_config(0), 0x1001_1af4, "IDs from the device");
    assert_eq!(
        (dev.read_config(0x0c) >> 16) & 0x80,
        0,
        "multi-function masked"
    );
    assert_eq!(
        dev.read_config(0x3c) & 0xffff,
        0x010a,
        "pin from device, line = GSI"
    );
    // Ext caps: SR-IOV at the head becomes a null capability; AER still reachable.
    let head = dev.read_config(0x100);
    assert_eq!(head & 0xffff, 0);
    assert_eq!(head >> 20, 0x140);
    // BAR writes never reach the device; other writes do.
    d.clear_calls();
    w(&mut dev, 0x10, 0xffff_ffff);
    dev.write_config(0x30, 0, &[0xff]);
    assert!(d.calls().is_empty());
    dev.write_config(0x0c, 1, &[0x40]); // latency timer
    assert_eq!(
        d.calls(),
        vec![DevCall::RegionWrite(CONFIG_REGION, 0x0d, vec![0x40])]
    );
    // Interrupt line is ours and writable, never forwarded.
    d.clear_calls();
    dev.write_config(0x3c, 0, &[0x0b]);
    assert_eq!(dev.read_config(0x3c) & 0xff, 0x0b);
    assert!(d.calls().is_empty());
}

#[test]
fn hostile_config_accesses_are_harmless() {
    let (mut dev, _d, _vm) = build(fake());
    assert_eq!(dev.read_config_register(usize::MAX), 0xffff_ffff);
    assert_eq!(dev.read_config_register(1024), 0xffff_ffff);
    dev.write_config_register(usize::MAX, 0, &[1]);
    dev.write_config_register(4, 3, &[1, 2]); // runs past the dword
    dev.write_config_register(4, u64::MAX, &[1]);
    dev.write_config_register(4, 0, &[]);
    dev.write_config_register(4, 0, &[1, 2, 3, 4, 5]);
    assert_eq!(dev.read_config(0x10) & 0xf, 0xc);
}

#[test]
fn memory_decode_maps_areas_around_the_msix_pages_and_follows_moves() {
    let (mut dev, _d, vm) = build(fake());
    assert!(vm.slots().is_empty(), "decode is off after reset");
    let bar0 = dev.bar_summaries()[0].addr;
    let bar3 = dev.bar_summaries()[2].addr;
    dev.write_config(COMMAND, 0, &[0x03]);
    let slots = vm.slots();
    let got: Vec<_> = slots.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        got,
        vec![(bar3, 0x1000), (bar0, 0x2000), (bar0 + 0x4000, 0xc000)]
    );
    let io = dev.bar_summaries()[1].addr;
    let traps = dev.trapped_ranges();
    assert!(
        traps.contains(&(AddressSpace::Mmio, bar0, 0x10000)),
        "VMM registers these"
    );
    assert!(traps.contains(&(AddressSpace::Pio, io, 0x20)));
    assert!(
        !vm.calls().iter().any(|c| matches!(c, VmCall::Trap(..))),
        "not asked again"
    );
    // Move BAR0 while decoding: old slots go, new ones come at the new address.
    vm.clear();
    let new = bar0 + 0x100_0000;
    w(&mut dev, 0x10, new as u32 | 0xc);
    w(&mut dev, 0x14, (new >> 32) as u32);
    let got: Vec<_> = vm.slots().iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        got,
        vec![(bar3, 0x1000), (new, 0x2000), (new + 0x4000, 0xc000)]
    );
    let c = vm.calls();
    let un = c
        .iter()
        .position(|c| *c == VmCall::Untrap(AddressSpace::Mmio, bar0))
        .unwrap();
    let re = c
        .iter()
        .position(|c| *c == VmCall::Trap(AddressSpace::Mmio, new, 0x10000))
        .unwrap();
    assert!(un < re);
    assert!(dev
        .trapped_ranges()
        .contains(&(AddressSpace::Mmio, new, 0x10000)));
    // Memory decode off: every MMIO slot goes; the traps stay but answer all-ones.
    dev.write_config(COMMAND, 0, &[0x01]);
    assert!(vm.slots().is_empty());
    let mut b = [0u8; 4];
    BusDevice::read(&mut dev, new, 0x2800, &mut b);
    assert_eq!(b, [0xff; 4], "no decode, no answer");
    BusDevice::read(&mut dev, io, 0, &mut b);
    assert_eq!(b, [0x11; 4], "I/O still decodes");
}

#[test]
fn sizing_with_decode_on_does_not_map_at_garbage() {
    let (mut dev, _d, vm) = build(fake());
    dev.write_config(COMMAND, 0, &[0x01]); // I/O decode only
    w(&mut dev, 0x18, 0xffff_ffff);
    // 0xffffffe0 does not fit 16-bit ports: the trap is not moved there, and the old
    // range stops answering.
    let io = dev.trapped_ranges()[1].1;
    assert!(vm.calls().iter().all(|c| !matches!(c, VmCall::Trap(..))));
    let mut b = [0u8; 2];
    BusDevice::read(&mut dev, io, 0, &mut b);
    assert_eq!(b, [0xff; 2]);
}

#[test]
fn trapped_bar_accesses_reach_the_region_or_the_emulated_table() {
    let (mut dev, d, _vm) = build(fake());
    dev.write_config(COMMAND, 0, &[0x03]);
    let bar0 = dev.bar_summaries()[0].addr;
    let mut b = [0u8; 4];
    BusDevice::read(&mut dev, bar0, 0x200c, &mut b);
    assert_eq!(u32::from_le_bytes(b), 1, "MSI-X vector 0 starts masked");
    BusDevice::read(&mut dev, bar0, 0x3000, &mut b);
    assert_eq!(b, [0; 4], "PBA");
    BusDevice::read(&mut dev, bar0, 0x2800, &mut b);
    assert_eq!(
        b, [0x5a; 4],
        "rest of the carved page comes from the region"
    );
    BusDevice::read(&mut dev, bar0, 0xfffe, &mut b);
    assert_eq!(b, [0xff; 4], "straddles the end of the BAR");
    BusDevice::read(&mut dev, bar0, u64::MAX, &mut b);
    assert_eq!(b, [0xff; 4]);
    BusDevice::read(&mut dev, 0x1234, 0, &mut b);
    assert_eq!(b, [0xff; 4], "not one of our BARs");
    d.clear_calls();
    BusDevice::write(&mut dev, bar0, 0x2804, &[1, 2, 3, 4]);
    BusDevice::write(&mut dev, bar0, 0x3000, &[1]); // PBA is read-only
    BusDevice::write(&mut dev, bar0, 0x10000, &[1]);
    assert_eq!(
        d.calls(),
        vec![DevCall::RegionWrite(0, 0x2804, vec![1, 2, 3, 4])]
    );
    let io = dev.bar_summaries()[1].addr;
    BusDevice::read(&mut dev, io, 4, &mut b);
    assert_eq!(b, [0x11; 4], "I/O BAR through the region");
}

#[test]
fn msix_enable_turns_intx_off_first_and_routes_on_unmask() {
    let (mut dev, d, vm) = build(fake());
    assert!(vm.irqfds().contains(&10), "INTx wired at start");
    dev.write_config(COMMAND, 0, &[0x02]);
    let bar0 = dev.bar_summaries()[0].addr;
    d.clear_calls();
    // Dword write at cap+0: enable with the function mask set, then clear it.
    w(&mut dev, 0x70, 0xc000_0000);
    assert_eq!(
        d.calls(),
        vec![
            DevCall::Disable(IrqIndex::Intx),
            DevCall::Enable(IrqIndex::Msix, 4)
        ]
    );
    assert_eq!(
        dev.read_config(0x70) >> 16,
        0xc003,
        "enable + mask read back with table size"
    );
    assert!(!vm.irqfds().contains(&10));
    BusDevice::write(&mut dev, bar0, 0x2010, &0xfee0_0000u32.to_le_bytes());
    BusDevice::write(&mut dev, bar0, 0x2018, &0x31u32.to_le_bytes());
    BusDevice::write(&mut dev, bar0, 0x201c, &0u32.to_le_bytes());
    assert!(vm.routes().is_empty(), "function mask still set");
    dev.write_config(0x70, 3, &[0x80]); // byte write: clear function mask
    let msg = MsiMessage {
        address_lo: 0xfee0_0000,
        address_hi: 0,
        data: 0x31,
    };
    assert_eq!(vm.routes().values().copied().collect::<Vec<_>>(), vec![msg]);
    // Disabling MSI-X brings INTx back.
    d.clear_calls();
    dev.write_config(0x70, 2, &[0x03, 0x00]);
    assert_eq!(d.calls()[0], DevCall::Disable(IrqIndex::Msix));
    assert!(vm.irqfds().contains(&10));
    assert!(vm.routes().is_empty());
}

#[test]
fn msi_enable_through_config_space() {
    let (mut dev, d, vm) = build(fake());
    w(&mut dev, 0x54, 0xfee0_0000);
    w(&mut dev, 0x58, 0);
    w(&mut dev, 0x5c, 0x25);
    d.clear_calls();
    dev.write_config(0x50, 2, &[0x01, 0x01]);
    assert_eq!(
        d.calls(),
        vec![
            DevCall::Disable(IrqIndex::Intx),
            DevCall::Enable(IrqIndex::Msi, 1)
        ]
    );
    assert_eq!(vm.routes().len(), 1);
    assert_eq!(
        dev.read_config(0x50) & 0xffff,
        0x7005,
        "ID/next from the device"
    );
    assert!(
        d.calls()
            .iter()
            .all(|c| !matches!(c, DevCall::RegionWrite(..))),
        "never written to hw"
    );
}

#[test]
fn sparse_and_unmappable_regions() {
    let mut f = fake();
    let info = RegionInfo {
        flags: RW_MMAP,
        size: 0x10000,
        offset: 0,
        sparse_areas: Some(vec![MmapArea {
            offset: 0x8000,
            size: 0x8000,
        }]),
        msix_mappable: false,
    };
    f.add_region(0, info, vec![0; 0x10000]);
    let (mut dev, _d, vm) = build(f);
    dev.write_config(COMMAND, 0, &[0x02]);
    let bar0 = dev.bar_summaries()[0].addr;
    assert!(vm
        .slots()
        .iter()
        .any(|s| (s.0, s.1) == (bar0 + 0x8000, 0x8000)));
    assert_eq!(
        vm.slots()
            .iter()
            .filter(|s| s.0 >= bar0 && s.0 < bar0 + 0x10000)
            .count(),
        1
    );
}

#[test]
fn missing_interrupts_hide_their_capabilities() {
    let mut f = fake();
    f.irqs.remove(&IrqIndex::Msi);
    f.irqs.remove(&IrqIndex::Intx);
    let (dev, _d, vm) = build(f);
    assert_eq!(
        dev.read_config(0x34) & 0xff,
        0x70,
        "MSI unlinked from the head"
    );
    assert_eq!(dev.read_config(0x3c) >> 8 & 0xff, 0, "no interrupt pin");
    assert!(vm.calls().is_empty(), "no INTx wiring");
    assert!(dev.intx_gsi().is_none());
}

#[test]
fn a_hidden_msix_table_still_traps_and_read_only_bars_are_not_mapped() {
    let mut f = fake();
    f.irqs.remove(&IrqIndex::Msix);
    let ro = RegionInfo {
        flags: 0x5,
        size: 0x100,
        offset: 0x11000,
        ..Default::default()
    };
    f.add_region(3, ro, vec![0x22; 0x100]); // readable + mmap, not writable
    let (mut dev, _d, vm) = build(f);
    assert_eq!(dev.read_config(0x50) >> 8 & 0xff, 0x90, "MSI-X unlinked");
    dev.write_config(COMMAND, 0, &[0x02]);
    let bar0 = dev.bar_summaries()[0].addr;
    let got: Vec<_> = vm.slots().iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        got,
        vec![(bar0, 0x2000), (bar0 + 0x4000, 0xc000)],
        "table pages carved, BAR3 traps"
    );
    let mut b = [0u8; 4];
    BusDevice::read(&mut dev, bar0, 0x2000, &mut b);
    assert_eq!(
        b, [0x5a; 4],
        "no emulation: the region answers (vfio-pci blocks the real table)"
    );
}

/// A guest doing random config writes and BAR accesses never panics passvm, and the
/// KVM state stays consistent: every irqfd has a route, every slot lies in a BAR.
#[test]
fn random_hostile_guest_cannot_break_the_model() {
    let (mut dev, _d, vm) = build(fake());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let interesting = [
        0x04usize, 0x10, 0x14, 0x18, 0x1c, 0x30, 0x3c, 0x50, 0x54, 0x58, 0x5c, 0x60, 0x70, 0x74,
        0x100,
    ];
    for _ in 0..50_000 {
        let r = next();
        let len = (r >> 8) as usize % 6;
        let data: Vec<u8> = (0..len).map(|i| (r >> (16 + i * 8)) as u8).collect();
        match r % 4 {
            0 => {
                let reg = if r & 0x100 != 0 {
                    interesting[(r >> 32) as usize % interesting.len()] / 4
                } else {
                    (r >> 32) as usize % 1100
                };
                dev.write_config_register(reg, (r >> 40) % 5, &data);
            }
            1 => {
                dev.read_config_register((r >> 32) as usize % 1100);
            }
            2 | 3 => {
                let bars = dev.bar_summaries();
                let base = match (r >> 32) % 5 {
                    4 => next(),
                    i => bars[i as usize % bars.len()].addr,
                };
                let offset = if r & 0x200 != 0 {
                    next()
                } else {
                    (r >> 44) % 0x11000
                };
                if r % 4 == 2 {
                    let mut buf = vec![0u8; len.max(1) + (r as usize >> 60) % 4];
                    BusDevice::read(&mut dev, base, offset, &mut buf);
                } else {
                    BusDevice::write(&mut dev, base, offset, &data);
                }
            }
            _ => unreachable!(),
        }
    }
    let routes = vm.routes();
    assert!(vm
        .irqfds()
        .iter()
        .all(|g| *g < 24 || routes.contains_key(g)));
    let calls = vm.calls();
    let count = |f: fn(&VmCall) -> bool| calls.iter().filter(|c| f(c)).count();
    // The walk really reached the interesting paths (seeded, so this is stable).
    assert!(count(|c| matches!(c, VmCall::AddSlot { .. })) > 0);
    assert!(count(|c| matches!(c, VmCall::SetRoute(..))) > 0);
    assert!(count(|c| matches!(c, VmCall::Irqfd(..))) > 0);
    assert!(count(|c| matches!(c, VmCall::Trap(..))) > 0);
    let bars = dev.bar_summaries();
    for (gpa, size, _) in vm.slots() {
        assert!(bars
            .iter()
            .any(|b| gpa >= b.addr && gpa + size <= b.addr + b.size.max(4096)));
    }
    drop(dev);
    assert!(vm.slots().is_empty() && vm.irqfds().is_empty() && vm.routes().is_empty());
}

#[test]
fn slots_leave_before_the_device_stops_decoding_and_come_after_it_starts() {
    let (mut dev, d, vm) = build(fake());
    d.watch_slots(vm.clone());
    dev.write_config(COMMAND, 0, &[0x02]);
    let slots_on = vm.slots().len();
    assert!(slots_on > 0);
    assert_eq!(
        d.slots_seen_at_last_write(),
        Some(0),
        "slots only after decode is on"
    );
    dev.write_config(COMMAND, 0, &[0x00]);
    assert_eq!(
        d.slots_seen_at_last_write(),
        Some(0),
        "no slot left when decode goes off"
    );
    assert!(vm.slots().is_empty());
}

#[test]
fn a_device_without_reset_still_stops_dma_on_reboot_and_at_start() {
    let mut f = fake();
    f.flags = 0; // no VFIO_DEVICE_FLAGS_RESET
                 // The host left memory decode and bus mastering on.
    f.regions[&CONFIG_REGION].1.lock().unwrap()[4] = 0x06;
    let (mut dev, d, vm) = build(f);
    assert_eq!(d.config_command() & 0x7, 0, "off before the guest runs");
    assert!(vm.slots().is_empty());
    dev.write_config(COMMAND, 0, &[0x06]);
    assert_eq!(d.config_command() & 0x7, 0x6);
    d.clear_calls();
    dev.reset();
    assert_eq!(
        d.config_command() & 0x7,
        0,
        "bus master off across the reboot"
    );
    let calls = d.calls();
    let off = calls
        .iter()
        .position(|c| matches!(c, DevCall::RegionWrite(CONFIG_REGION, 4, _)));
    let reset = calls.iter().position(|c| *c == DevCall::Reset);
    assert!(
        off.unwrap() < reset.unwrap(),
        "DMA stopped before the (no-op) reset"
    );
    assert!(
        vm.slots().is_empty(),
        "no decode after reboot until the guest enables it"
    );
}

#[test]
fn bridges_and_missing_config_are_refused_with_reasons() {
    let mut cfg = vec![0u8; 256];
    cfg[HEADER_TYPE] = 0x01;
    let vm = Arc::new(RecordingVm::new());
    let mut a = allocator();
    let ctx = DeviceContext {
        rom: crate::vfio::device::RomImage::FromDevice,
        multifunction: false,
        vm: vm.clone(),
        routing: vm.clone(),
        bars: &mut a,
        intx_gsi: None,
        dma: None,
    };
    let e = VfioPciDevice::new("br", Arc::new(FakeDevice::new(cfg)), ctx)
        .err()
        .unwrap();
    assert!(e.to_string().contains("only endpoint"), "{e}");
    let mut tiny = BarAllocator::new(None, None, None, DEFAULT_MMIO64_LIMIT);
    let ctx = DeviceContext {
        rom: crate::vfio::device::RomImage::FromDevice,
        multifunction: false,
        vm: vm.clone(),
        routing: vm,
        bars: &mut tiny,
        intx_gsi: None,
        dma: None,
    };
    let e = VfioPciDevice::new("nospace", Arc::new(fake()), ctx)
        .err()
        .unwrap();
    let e = e.to_string();
    assert!(
        e.starts_with("nospace: BAR0: no room for a 64 KiB") && e.contains("pass fewer devices"),
        "{e}"
    );
}

#[test]
fn reset_and_drop_release_everything() {
    let (mut dev, d, vm) = build(fake());
    dev.write_config(COMMAND, 0, &[0x03]);
    w(&mut dev, 0x70, 0x8000_0000);
    let bar0 = dev.bar_summaries()[0].addr;
    BusDevice::write(&mut dev, bar0, 0x200c, &0u32.to_le_bytes());
    assert_eq!(vm.irqfds().len(), 1);
    w(&mut dev, 0x10, 0xd000_000c); // guest moved it
    dev.write_config(0x3c, 0, &[0x05]);
    d.clear_calls();
    dev.reset();
    assert!(vm.slots().is_empty() && vm.routes().is_empty());
    assert!(d.calls().contains(&DevCall::Reset));
    assert_eq!(
        dev.bar_summaries()[0].addr,
        bar0,
        "BAR back at its first address"
    );
    assert!(vm.irqfds().contains(&10), "INTx wired again");
    assert_eq!(
        dev.read_config(0x3c) & 0xff,
        10,
        "interrupt line back to the GSI"
    );
    assert!(vm.calls().contains(&VmCall::FreeGsi(24)));
    dev.write_config(COMMAND, 0, &[0x02]);
    assert!(!vm.slots().is_empty());
    d.clear_calls();
    drop(dev);
    assert!(vm.slots().is_empty() && vm.irqfds().is_empty());
    assert_eq!(d.calls().last(), Some(&DevCall::Reset));
}

#[test]
fn intx_fallback_exposes_the_eoi_fd() {
    let mut f = fake();
    f.unmask_fd_unsupported = true;
    let (dev, d, _vm) = build(f);
    let fd = dev.intx_eoi_fd().expect("VMM must poll");
    fd.write(1).unwrap();
    d.clear_calls();
    dev.handle_intx_eoi();
    assert_eq!(d.calls(), vec![DevCall::UnmaskIntx]);
    let (dev, _d, _vm) = build(fake());
    assert!(dev.intx_eoi_fd().is_none());
}

/// Bus Master Enable is the one write that needs guest RAM mapped: it waits for a mapping
/// still running beside the boot, reaches the device once it completes, and never
/// reaches it when the mapping failed (memory decode, which needs no RAM, goes through).
#[test]
fn bus_mastering_waits_for_the_dma_map_and_is_refused_when_the_map_failed() {
    let gate = Arc::new(DmaGate::pending(1 << 20));
    let (mut dev, d, _vm) = build_with_dma(fake(), Some(gate.clone()));
    dev.write_config(COMMAND, 0, &[0x02]);
    assert_eq!(d.config_command() & 0x7, 0x2, "memory decode does not wait");
    let guest = std::thread::spawn(move || {
        dev.write_config(COMMAND, 0, &[0x06]);
        dev
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!guest.is_finished(), "the write waits for the mapping");
    assert_eq!(
        d.config_command() & 0x4,
        0,
        "no bus mastering before RAM is mapped"
    );
    gate.finish(Ok(DmaReport {
        regions: 1,
        bytes: 1 << 20,
        elapsed: std::time::Duration::from_millis(50),
    }));
    let mut dev = guest.join().unwrap();
    assert_eq!(d.config_command() & 0x7, 0x6, "then it reaches the device");
    dev.write_config(COMMAND, 0, &[0x02]);
    dev.write_config(COMMAND, 0, &[0x06]);
    assert_eq!(
        d.config_command() & 0x7,
        0x6,
        "a mapped gate does not block"
    );

    let failed = Arc::new(DmaGate::pending(1 << 20));
    failed.finish(Err("pinning failed".into()));
    let (mut dev, d, _vm) = build_with_dma(fake(), Some(failed));
    // A word write (command and status) as Linux's pci_set_master does it.
    dev.write_config(COMMAND, 0, &[0x06, 0x00]);
    assert_eq!(
        d.config_command() & 0x7,
        0x2,
        "decode on, bus mastering refused"
    );
    assert_eq!(
        dev.read_config(COMMAND) & 0x4,
        0,
        "the guest reads it clear"
    );
}

/// `fake()` with a power-management capability at 0x40 (PMCSR at 0x44) before MSI.
fn fake_with_pm() -> FakeDevice {
    let d = fake();
    {
        let mut cfg = d.regions[&CONFIG_REGION].1.lock().unwrap();
        cfg[0x34] = 0x40;
        put32(&mut cfg, 0x40, 0x0003_5001); // PM, next 0x50, version 3
    }
    d
}

#[test]
fn d3hot_takes_the_slots_down_first_and_brings_them_back_after_d0() {
    let (mut dev, d, vm) = build(fake_with_pm());
    d.watch_slots(vm.clone());
    dev.write_config(COMMAND, 0, &[0x03]);
    let on = vm.slots().len();
    assert!(on > 0);
    let bar3 = dev.bar_summaries()[2].addr;
    let mut b = [0u8; 4];
    BusDevice::read(&mut dev, bar3, 0, &mut b);
    assert_eq!(b, [0x22; 4]);
    w(&mut dev, 0x44, 0x3); // D3hot
    assert!(vm.slots().is_empty());
    assert_eq!(
        d.slots_seen_at_last_write(),
        Some(0),
        "no slot left when the device enters D3hot (vfio-pci revokes the mmaps)"
    );
    // In between: reads are all-ones, writes are dropped, the VM goes on.
    BusDevice::read(&mut dev, bar3, 0, &mut b);
    assert_eq!(b, [0xff; 4]);
    BusDevice::write(&mut dev, bar3, 0, &[1, 2, 3, 4]);
    // Memory decode toggled in D3hot still maps nothing; PME bits keep D3hot.
    dev.write_config(COMMAND, 0, &[0x01]);
    dev.write_config(COMMAND, 0, &[0x03]);
    w(&mut dev, 0x44, 0x8103);
    assert!(vm.slots().is_empty());
    w(&mut dev, 0x44, 0x0); // D0
    assert_eq!(vm.slots().len(), on);
    assert_eq!(
        d.slots_seen_at_last_write(),
        Some(0),
        "slots only once the device is back in D0"
    );
    BusDevice::read(&mut dev, bar3, 0, &mut b);
    assert_eq!(b, [0x22; 4], "the write in D3hot never reached the device");
    // A reboot's reset leaves D3hot behind.
    w(&mut dev, 0x44, 0x3);
    dev.reset();
    dev.write_config(COMMAND, 0, &[0x03]);
    assert_eq!(vm.slots().len(), on);
}

#[test]
fn a_bar_moved_over_another_owner_stays_unmapped_until_moved_away() {
    let (mut dev, _d, vm) = build(fake());
    dev.write_config(COMMAND, 0, &[0x03]);
    let bar3 = dev.bar_summaries()[2].addr;
    let before = vm.slots().len();
    // The VMM's own range (a platform device) where the guest aims BAR3.
    vm.occupy(AddressSpace::Mmio, 0xd000_0000, 0x1000);
    w(&mut dev, 0x1c, 0xd000_0000);
    assert!(
        !dev.trapped_ranges().iter().any(|r| r.1 == 0xd000_0000),
        "no record of a refused range"
    );
    assert_eq!(
        vm.owner_at(AddressSpace::Mmio, 0xd000_0000),
        Some(crate::bus::Owner::VMM)
    );
    assert_eq!(vm.slots().len(), before - 1, "BAR3's slot went, none came");
    let mut b = [0u8; 4];
    BusDevice::read(&mut dev, 0xd000_0000, 0, &mut b);
    assert_eq!(b, [0xff; 4]);
    // A second move must not take the VMM's range down on the way.
    w(&mut dev, 0x1c, bar3 as u32);
    assert_eq!(
        vm.owner_at(AddressSpace::Mmio, 0xd000_0000),
        Some(crate::bus::Owner::VMM)
    );
    assert_eq!(vm.slots().len(), before);
    BusDevice::read(&mut dev, bar3, 0, &mut b);
    assert_eq!(b, [0x22; 4]);
}

#[test]
fn device_errors_reach_an_eventfd_the_vmm_polls() {
    let (dev, d, _vm) = build(fake());
    assert!(dev.error_fd().is_none(), "no error index: nothing to poll");
    assert!(dev.take_error().is_none());
    assert!(!d.calls().contains(&DevCall::Enable(IrqIndex::Err, 1)));

    let mut f = fake();
    f.irqs.insert(IrqIndex::Err, IrqInfo { flags: 1, count: 1 });
    let (dev, d, _vm) = build(f);
    assert!(d.calls().contains(&DevCall::Enable(IrqIndex::Err, 1)));
    assert!(dev.take_error().is_none(), "quiet until the host signals");
    // What vfio-pci's error_detected does: signal the eventfd, once per error.
    let fd = dev.error_fd().expect("an error eventfd");
    fd.write(1).unwrap();
    fd.write(1).unwrap();
    assert_eq!(dev.take_error(), Some(2));
    assert_eq!(dev.take_error(), None, "read once");
}

#[test]
fn a_function_without_reset_gets_a_bus_reset_and_one_with_reset_does_not() {
    // VFIO_DEVICE_RESET offered: no hot reset.
    let (_dev, d, _vm) = build(fake());
    assert!(d.calls().contains(&DevCall::Reset));
    assert!(!d.calls().contains(&DevCall::HotReset));

    // No reset of its own (flags without VFIO_DEVICE_FLAGS_RESET): the bus reset, at
    // start, at a guest reboot and at teardown.
    let mut f = fake();
    f.flags = 0;
    f.hot_reset = HotReset::Done("0000:02:00.0, 0000:02:00.1".into());
    let (mut dev, d, _vm) = build(f);
    let hot = |d: &FakeDevice| {
        d.calls()
            .iter()
            .filter(|c| **c == DevCall::HotReset)
            .count()
    };
    assert_eq!(hot(&d), 1, "at start");
    w(&mut dev, COMMAND, 0x6);
    dev.reset();
    assert_eq!(hot(&d), 2, "at a guest reboot");
    assert_eq!(
        d.config_command() & 0x6,
        0,
        "the bus reset cleared the command register"
    );
    drop(dev);
    assert_eq!(hot(&d), 3, "at teardown");

    // Refused (another VM's function on the bus): the device still comes up.
    let mut f = fake();
    f.flags = 0;
    f.hot_reset = HotReset::Refused("0000:02:00.1 is not ours".into());
    let (dev, d, _vm) = build(f);
    assert_eq!(hot(&d), 1);
    assert!(!dev.bar_summaries().is_empty());
}

#[test]
fn a_failing_function_reset_falls_back_to_the_bus_reset() {
    // The kernel offered "bus" for the first function of a slot before its sibling
    // appeared; VFIO_DEVICE_RESET then fails, and the hot reset is what works.
    let mut f = fake();
    f.reset_fails = true;
    f.hot_reset = HotReset::Done("0000:02:00.0, 0000:02:00.1".into());
    let (_dev, d, _vm) = build(f);
    let calls = d.calls();
    let reset = calls.iter().position(|c| *c == DevCall::Reset);
    let hot = calls.iter().position(|c| *c == DevCall::HotReset);
    assert!(reset.is_some() && hot > reset, "{calls:?}");
}
