//! A probe of the device model against a real VFIO device, for hosts that have one (the
//! nested bed's L1, or a developer's machine with a spare device bound to vfio-pci):
//!
//! ```text
//! PASSVM_PROBE_DEVICE=/sys/bus/pci/devices/0000:00:10.0 PASSVM_PROBE_BACKEND=iommufd \
//!     cargo test -p devices hw_probe -- --ignored --nocapture
//! ```
//!
//! It runs the real backends, the IOVA query, a DMA map, the config-space model, BAR
//! mmaps as real KVM slots, MSI-X enable with a VFIO loopback interrupt arriving on the
//! vector's eventfd, INTx wiring, reset, and a clean teardown. Lines start with `PROBE`.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::device::{DeviceContext, VfioPciDevice};
use super::device_fd::{IrqIndex, VfioDeviceOps};
use super::iommu::DeviceSource;
use super::testing::RecordingVm;
use super::vm::kvm::{KvmVmOps, SlotPool};
use crate::bus::{BusDevice, SharedBus};
use crate::pci::bar::{BarAllocator, Window, DEFAULT_MMIO64_LIMIT};
use crate::pci::config_space::COMMAND;
use crate::pci::kvm_routing::Interrupts;

#[test]
#[ignore = "needs a VFIO device: PASSVM_PROBE_DEVICE=<sysfs path> [PASSVM_PROBE_BACKEND=group|iommufd]"]
fn hw_probe() {
    let Ok(sysfs) = std::env::var("PASSVM_PROBE_DEVICE") else {
        println!("PROBE skipped: PASSVM_PROBE_DEVICE is not set");
        return;
    };
    let backend = std::env::var("PASSVM_PROBE_BACKEND").unwrap_or_else(|_| "iommufd".into());
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    let vm = Arc::new(kvm.create_vm().unwrap());
    vm.create_irq_chip().unwrap();
    let kdev = super::iommu::kvm_vfio::create_kvm_vfio_device(&vm).unwrap();
    let space = match backend.as_str() {
        "group" => super::iommu::group::open_container(kdev),
        _ => super::iommu::iommufd::open_ioas(kdev, None),
    }
    .unwrap_or_else(|e| panic!("PROBE FAIL backend: {e}"));
    let src = DeviceSource {
        sysfs: sysfs.clone().into(),
        cdev: None,
        cdev_fd: None,
    };
    let dev = Arc::new(
        space
            .open_device(&src)
            .unwrap_or_else(|e| panic!("PROBE FAIL open: {e}")),
    );
    println!(
        "PROBE opened {sysfs} via {} flags={:#x}",
        space.name(),
        dev.device_flags()
    );
    match space.iova_ranges() {
        Ok(r) => println!("PROBE iova_ranges {}", super::iommu::iova::describe(&r)),
        Err(e) => println!("PROBE iova_ranges error {e}"),
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let report = space
        .map_guest_memory(&mem)
        .unwrap_or_else(|e| panic!("PROBE FAIL dma: {e}"));
    println!(
        "PROBE dma_map bytes={} regions={} ms={:.2}",
        report.bytes,
        report.regions,
        report.elapsed.as_secs_f64() * 1e3
    );

    let (pio, mmio) = (Arc::new(SharedBus::new()), Arc::new(SharedBus::new()));
    let mut bars = probe_bars();
    let ops = Arc::new(KvmVmOps::new(
        vm.clone(),
        Arc::new(SlotPool::new(100, 200)),
        &pio,
        &mmio,
        bars.windows(),
    ));
    let routing = Arc::new(RecordingVm::new());
    let ctx = DeviceContext {
        rom: crate::vfio::device::RomImage::FromDevice,
        multifunction: false,
        vm: ops.clone(),
        routing: routing.clone(),
        bars: &mut bars,
        intx_gsi: Some(10),
        dma: None,
    };
    let model = VfioPciDevice::new("probe", dev.clone(), ctx)
        .unwrap_or_else(|e| panic!("PROBE FAIL model: {e}"));
    // On the buses as the VMM puts it there: its slots go only inside its placed BARs.
    let ranges = model.trapped_ranges();
    let model = Arc::new(std::sync::Mutex::new(model));
    ops.set_device(&(model.clone() as Arc<std::sync::Mutex<dyn BusDevice>>));
    ops.insert_traps(&ranges)
        .unwrap_or_else(|e| panic!("PROBE FAIL traps: {e}"));
    let mut d = model.lock().unwrap();
    let id = d.read_config(0);
    println!("PROBE ids {:04x}:{:04x}", id & 0xffff, id >> 16);
    for b in d.bar_summaries() {
        println!(
            "PROBE bar{} {:?} addr={:#x} size={:#x}",
            b.index, b.kind, b.addr, b.size
        );
    }
    println!(
        "PROBE intx gsi={:?} pin={:?} userspace_eoi={}",
        d.intx_gsi(),
        d.intx_pin(),
        d.intx_eoi_fd().is_some()
    );
    println!("PROBE intx_wired={}", routing.irqfds().contains(&10));

    d.write_config(COMMAND, 0, &[0x07]);
    println!("PROBE decode_on slots={:?}", d.mapped_slot_count());
    for (index, offset, host) in d.mapped_areas() {
        let mut via_region = [0u8; 4];
        dev.region_read(index as u32, offset, &mut via_region);
        // SAFETY: `host` is a live, page-sized-or-larger mapping of the device's BAR owned
        // by `d`; a volatile 4-byte read at its start stays inside it.
        let via_mmap = unsafe { std::ptr::read_volatile(host as *const u32) };
        println!(
            "PROBE bar{index}+{offset:#x} region={:#x} mmap={via_mmap:#x}",
            u32::from_le_bytes(via_region)
        );
    }
    if let Some(io) = d.bar_summaries().into_iter().find(|b| b.kind.is_io()) {
        // A UART (mtty): write a byte, then read LSR and RBR through the trapped path.
        d.trap_write(io.addr, 0, b"P");
        let (mut lsr, mut rbr) = ([0u8], [0u8]);
        d.trap_read(io.addr, 5, &mut lsr);
        d.trap_read(io.addr, 0, &mut rbr);
        println!(
            "PROBE io bar{} lsr={:#x} rbr={:#x}",
            io.index, lsr[0], rbr[0]
        );
    }

    if let Some(cap) = d.msix_model().map(|m| *m.cap()) {
        let bar = d
            .bar_summaries()
            .into_iter()
            .find(|b| b.index == cap.table_bar as usize)
            .unwrap();
        let mut v = [0u8; 4];
        d.trap_read(bar.addr, cap.table_offset + 12, &mut v);
        println!(
            "PROBE msix table_size={} vector0_ctrl={}",
            cap.table_size,
            u32::from_le_bytes(v)
        );
        d.write_config(cap.offset, 2, &0xc000u16.to_le_bytes()); // enable + function mask
        d.trap_write(bar.addr, cap.table_offset, &0xfee0_0000u32.to_le_bytes());
        d.trap_write(bar.addr, cap.table_offset + 8, &0x41u32.to_le_bytes());
        d.trap_write(bar.addr, cap.table_offset + 12, &0u32.to_le_bytes());
        d.write_config(cap.offset, 3, &[0x80]); // clear the function mask
        println!(
            "PROBE msix routes={} intx_wired={}",
            routing.routes().len(),
            routing.irqfds().contains(&10)
        );
        let fd = d
            .msix_model()
            .unwrap()
            .eventfd(0)
            .unwrap()
            .try_clone()
            .unwrap();
        let looped = dev.inner().unwrap().trigger_irq(IrqIndex::Msix.raw(), 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        println!(
            "PROBE msix loopback trigger={:?} eventfd={:?}",
            looped.is_ok(),
            fd.read().ok()
        );
        d.write_config(cap.offset, 3, &[0x00]); // disable
        println!(
            "PROBE msix_off routes={} intx_wired={}",
            routing.routes().len(),
            routing.irqfds().contains(&10)
        );
    }
    d.reset();
    println!(
        "PROBE reset ok, slots after reset={:?}",
        d.mapped_slot_count()
    );
    drop(d);
    drop(dev);
    drop(space);
    println!("PROBE done");
}

impl VfioPciDevice {
    fn trap_read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        BusDevice::read(self, base, offset, data)
    }
    fn trap_write(&mut self, base: u64, offset: u64, data: &[u8]) {
        BusDevice::write(self, base, offset, data)
    }
}

fn irr_bit(vcpu: &kvm_ioctls::VcpuFd, vector: u8) -> bool {
    let l = vcpu.get_lapic().unwrap();
    let reg = 0x200 + (vector as usize / 32) * 16;
    let word = u32::from_le_bytes([
        l.regs[reg] as u8,
        l.regs[reg + 1] as u8,
        l.regs[reg + 2] as u8,
        l.regs[reg + 3] as u8,
    ]);
    word & (1 << (vector % 32)) != 0
}

/// The BAR windows the probes place the device in, as passvm lays them out: 32-bit
/// memory from 3 GiB up to the IOAPIC, 64-bit memory at 64 GiB, I/O ports at 0xc000.
fn probe_bars() -> BarAllocator {
    BarAllocator::new(
        Some(Window {
            base: 0xc000_0000,
            size: 0x3ec0_0000,
        }),
        Some(Window {
            base: 1 << 36,
            size: 1 << 36,
        }),
        Some(Window {
            base: 0xc000,
            size: 0x4000,
        }),
        DEFAULT_MMIO64_LIMIT,
    )
}

/// What both KVM probes run on: a VM with an in-kernel irqchip and one vCPU whose LAPIC
/// is enabled, the device opened through `PASSVM_PROBE_BACKEND` (iommufd by default),
/// real GSI routing, real buses and memory slots, and the device model on top.
struct Rig {
    vcpu: kvm_ioctls::VcpuFd,
    dev: Arc<super::iommu::handle::OwnedVfioDevice>,
    device: Arc<std::sync::Mutex<VfioPciDevice>>,
    // The VM ops hold the buses weakly: they must outlive the device model.
    _buses: (Arc<SharedBus>, Arc<SharedBus>),
}

impl Rig {
    /// `irqchip_setup` runs once the LAPIC is on, before the device opens.
    fn new(sysfs: &str, intx_gsi: u32, irqchip_setup: impl FnOnce(&kvm_ioctls::VmFd)) -> Self {
        let backend = std::env::var("PASSVM_PROBE_BACKEND").unwrap_or_else(|_| "iommufd".into());
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut l = vcpu.get_lapic().unwrap();
        l.regs[0xf0] = 0xff_u8 as _; // spurious vector 0xff
        l.regs[0xf1] = 0x01; // SVR bit 8: APIC software-enabled
        vcpu.set_lapic(&l).unwrap();
        irqchip_setup(&vm);
        let kdev = super::iommu::kvm_vfio::create_kvm_vfio_device(&vm).unwrap();
        let space = match backend.as_str() {
            "group" => super::iommu::group::open_container(kdev),
            _ => super::iommu::iommufd::open_ioas(kdev, None),
        }
        .unwrap();
        let src = DeviceSource {
            sysfs: sysfs.into(),
            cdev: None,
            cdev_fd: None,
        };
        let dev = Arc::new(space.open_device(&src).unwrap());
        let routing = Arc::new(Interrupts::new(vm.clone()).unwrap());
        let (pio, mmio) = (Arc::new(SharedBus::new()), Arc::new(SharedBus::new()));
        let mut bars = probe_bars();
        let ops = Arc::new(KvmVmOps::new(
            vm.clone(),
            Arc::new(SlotPool::new(100, 200)),
            &pio,
            &mmio,
            bars.windows(),
        ));
        let ctx = DeviceContext {
            rom: crate::vfio::device::RomImage::FromDevice,
            multifunction: false,
            vm: ops.clone(),
            routing,
            bars: &mut bars,
            intx_gsi: Some(intx_gsi),
            dma: None,
        };
        let device = VfioPciDevice::new("probe", dev.clone(), ctx).unwrap();
        let ranges = device.trapped_ranges();
        let device = Arc::new(std::sync::Mutex::new(device));
        ops.set_device(&(device.clone() as Arc<std::sync::Mutex<dyn BusDevice>>));
        ops.insert_traps(&ranges).unwrap();
        Rig {
            vcpu,
            dev,
            device,
            _buses: (pio, mmio),
        }
    }
}

/// MSI-X end to end on real KVM: a VFIO loopback interrupt on vector 0 must arrive in
/// vCPU 0's local APIC (IRR) through the shared eventfd, the irqfd and the MSI route the
/// model built from the guest's table entry; masked, it must not.
#[test]
#[ignore = "needs a VFIO device with MSI-X: PASSVM_PROBE_DEVICE=<sysfs path> [PASSVM_PROBE_BACKEND=group|iommufd]"]
fn hw_probe_kvm_msix() {
    let Ok(sysfs) = std::env::var("PASSVM_PROBE_DEVICE") else {
        println!("PROBE skipped: PASSVM_PROBE_DEVICE is not set");
        return;
    };
    let rig = Rig::new(&sysfs, 16, |_| ());
    let (vcpu, dev, device) = (rig.vcpu, rig.dev, rig.device);
    let mut d = device.lock().unwrap();
    let Some(cap) = d.msix_model().map(|m| *m.cap()) else {
        println!("PROBE no MSI-X");
        return;
    };
    d.write_config(COMMAND, 0, &[0x06]);
    let bar = d
        .bar_summaries()
        .into_iter()
        .find(|b| b.index == cap.table_bar as usize)
        .unwrap();
    d.write_config(cap.offset, 2, &0xc000u16.to_le_bytes());
    d.trap_write(bar.addr, cap.table_offset, &0xfee0_0000u32.to_le_bytes());
    d.trap_write(bar.addr, cap.table_offset + 8, &0x41u32.to_le_bytes());
    d.trap_write(bar.addr, cap.table_offset + 12, &0u32.to_le_bytes());
    d.write_config(cap.offset, 3, &[0x80]);
    let vfio = dev.inner().unwrap();
    assert!(!irr_bit(&vcpu, 0x41));
    vfio.trigger_irq(IrqIndex::Msix.raw(), 0).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let delivered = irr_bit(&vcpu, 0x41);
    println!("PROBE kvm msix vector 0x41 in IRR after loopback: {delivered}");
    // Mask the vector: a trigger now stays in the eventfd; unmask delivers it.
    d.trap_write(bar.addr, cap.table_offset + 12, &1u32.to_le_bytes());
    d.trap_write(bar.addr, cap.table_offset + 8, &0x42u32.to_le_bytes());
    vfio.trigger_irq(IrqIndex::Msix.raw(), 0).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let while_masked = irr_bit(&vcpu, 0x42);
    d.trap_write(bar.addr, cap.table_offset + 12, &0u32.to_le_bytes());
    std::thread::sleep(std::time::Duration::from_millis(50));
    let after_unmask = irr_bit(&vcpu, 0x42);
    println!("PROBE kvm msix masked: in IRR {while_masked}; after unmask {after_unmask}");
    assert!(delivered && !while_masked && after_unmask);
    drop(d);
    println!("PROBE kvm msix done");
}

/// Points IOAPIC pin `pin` at `vector` on APIC 0, level-triggered, active-high, unmasked
/// (what the guest's IOAPIC driver does from the MP table entry).
fn program_ioapic_pin(vm: &kvm_ioctls::VmFd, pin: usize, vector: u8) {
    let mut chip = kvm_bindings::kvm_irqchip {
        chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).unwrap();
    // SAFETY: chip_id IOAPIC makes `ioapic` the active member of the union, and the
    // entries are plain integers.
    unsafe {
        chip.chip.ioapic.redirtbl[pin].bits = u64::from(vector) | (1 << 15);
    }
    vm.set_irqchip(&chip).unwrap();
}

/// INTx end to end on real KVM: a VFIO INTx loopback must raise the IOAPIC pin through
/// the resample irqfd and reach vCPU 0's IRR; VFIO's automask then holds further
/// assertions until the guest's EOI (which needs a running vCPU, so is not checked).
#[test]
#[ignore = "needs a VFIO device with INTx: PASSVM_PROBE_DEVICE=<sysfs path> [PASSVM_PROBE_BACKEND=group|iommufd]"]
fn hw_probe_kvm_intx() {
    let Ok(sysfs) = std::env::var("PASSVM_PROBE_DEVICE") else {
        println!("PROBE skipped: PASSVM_PROBE_DEVICE is not set");
        return;
    };
    let rig = Rig::new(&sysfs, 17, |vm| program_ioapic_pin(vm, 17, 0x51));
    let (vcpu, dev, device) = (rig.vcpu, rig.dev, rig.device);
    let d = device.lock().unwrap();
    println!(
        "PROBE kvm intx gsi={:?} userspace_eoi={}",
        d.intx_gsi(),
        d.intx_eoi_fd().is_some()
    );
    let vfio = dev.inner().unwrap();
    assert!(!irr_bit(&vcpu, 0x51));
    let t = vfio.trigger_irq(IrqIndex::Intx.raw(), 0);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let delivered = irr_bit(&vcpu, 0x51);
    println!(
        "PROBE kvm intx trigger={:?} vector 0x51 in IRR: {delivered}",
        t.is_ok()
    );
    if d.intx_eoi_fd().is_some() {
        d.handle_intx_eoi(); // the fallback path must not fail either
    }
    assert!(delivered);
    drop(d);
    println!("PROBE kvm intx done");
}

/// DMA map/unmap time per GiB on a real IOMMU, 4 KiB pages vs 2 MiB hugepages, for the
/// backend in `PASSVM_PROBE_BACKEND` (size in MiB from `PASSVM_PROBE_DMA_MIB`, 256 by
/// default; hugepages need `/proc/sys/vm/nr_hugepages` set first).
#[test]
#[ignore = "needs a VFIO device: PASSVM_PROBE_DEVICE=<sysfs path> [PASSVM_PROBE_BACKEND] [PASSVM_PROBE_DMA_MIB]"]
fn hw_dma_bench() {
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::GuestRegionMmap;
    let Ok(sysfs) = std::env::var("PASSVM_PROBE_DEVICE") else {
        println!("PROBE skipped: PASSVM_PROBE_DEVICE is not set");
        return;
    };
    let backend = std::env::var("PASSVM_PROBE_BACKEND").unwrap_or_else(|_| "iommufd".into());
    let mib: usize = std::env::var("PASSVM_PROBE_DMA_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().unwrap();
    let kdev = super::iommu::kvm_vfio::create_kvm_vfio_device(&vm).unwrap();
    let space = match backend.as_str() {
        "group" => super::iommu::group::open_container(kdev),
        _ => super::iommu::iommufd::open_ioas(kdev, None),
    }
    .unwrap();
    let src = DeviceSource {
        sysfs: sysfs.into(),
        cdev: None,
        cdev_fd: None,
    };
    let _dev = space.open_device(&src).unwrap();
    for (label, flags) in [
        (
            "4k",
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        ),
        (
            "2m",
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
        ),
    ] {
        let region = match MmapRegionBuilder::<()>::new(mib << 20)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                println!("PROBE dma_bench {} {label}: no memory ({e})", space.name());
                continue;
            }
        };
        let mem =
            GuestMemoryMmap::from_regions(vec![
                GuestRegionMmap::new(region, GuestAddress(0)).unwrap()
            ])
            .unwrap();
        match space.map_guest_memory(&mem) {
            Ok(r) => {
                let unmap = space.unmap_guest_memory(&mem).unwrap();
                let per_gib = |d: std::time::Duration| d.as_secs_f64() * 1e3 * 1024.0 / mib as f64;
                println!(
                    "PROBE dma_bench {} {label} {mib} MiB: map {:.0} ms/GiB, unmap {:.0} ms/GiB",
                    space.name(),
                    per_gib(r.elapsed),
                    per_gib(unmap)
                );
            }
            Err(e) => println!("PROBE dma_bench {} {label}: {e}", space.name()),
        }
    }
}
