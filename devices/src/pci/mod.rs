//! PCI: the host bridge (config mechanism #1 on 0xCF8/0xCFC), config space and BAR helpers,
//! and the interrupt-routing interface a PCI device model uses to reach the guest: the
//! trait here, its rules as data in [`route_table`], the VMM's KVM owner in [`kvm_routing`].

pub mod bar;
pub(crate) mod caps;
pub(crate) mod config_space;
pub mod ecam;
pub mod host_bridge;
pub mod kvm_routing;
pub mod root_port;
pub mod route_table;
/// Config-space fixtures, public for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub mod testing;
#[cfg(all(test, not(feature = "fuzzing")))]
mod testing;

use vmm_sys_util::eventfd::EventFd;

/// A function on the guest's PCI bus, as the host bridge sees it.
///
/// Config accesses arrive as a 32-bit register index plus a byte offset inside it, the
/// way mechanism #1 delivers them; the device decides what each byte means.
pub trait PciDevice: Send {
    /// Reads config register `reg_idx` (offset `reg_idx * 4`).
    fn read_config_register(&mut self, reg_idx: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` inside config register `reg_idx`.
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]);
}

/// An MSI message as the guest programs it into an MSI capability or an MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address, low 32 bits (0xFEEx_xxxx on x86: destination APIC ID and mode).
    pub address_lo: u32,
    /// Message address, high 32 bits (0 on x86 unless x2APIC extended destination IDs).
    pub address_hi: u32,
    /// Message data (vector and delivery mode).
    pub data: u32,
}

/// Errors from the interrupt-routing owner.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// Every routable GSI is in use.
    #[error("no free GSI left for an MSI route (all {0} are in use)")]
    GsiExhausted(u32),
    /// The GSI was not handed out by [`InterruptRouting::allocate_gsi`], or is an irqchip pin.
    #[error("GSI {0} is not an allocated MSI GSI")]
    NotAllocated(u32),
    /// An irqfd was requested on an MSI GSI that has no route yet.
    #[error("GSI {0} has no route yet: set the MSI route before registering its irqfd")]
    NoRoute(u32),
    /// A route removal while an irqfd still points at the GSI.
    #[error("GSI {0} still has an irqfd: unregister it before removing the route")]
    IrqfdStillRegistered(u32),
    /// A GSI freed while its route is still in the table.
    #[error("GSI {0} still has a route: remove it before freeing the GSI")]
    RouteStillSet(u32),
    /// A resample irqfd on a GSI that is not an irqchip (IOAPIC/PIC) pin: KVM would accept
    /// it but never signal the resample eventfd, so level interrupts would stay masked.
    #[error(
        "GSI {0} is not an IOAPIC pin: resample irqfds only work for level-triggered irqchip GSIs"
    )]
    ResampleNeedsIrqchip(u32),
    /// The kernel refused the request.
    #[error("KVM {op} failed for GSI {gsi}: {source}")]
    Kvm {
        /// The operation that failed.
        op: &'static str,
        /// The GSI involved.
        gsi: u32,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
}

/// The VMM's single owner of the KVM GSI routing table, as seen by device models.
///
/// `KVM_SET_GSI_ROUTING` replaces the whole table, so a device that called it directly would
/// wipe the IOAPIC/PIC defaults and every other device's MSI routes; devices therefore go
/// through this interface, and the owner re-sends the complete table on every change.
///
/// Ordering rules the implementation enforces (each is a known way to lose interrupts or
/// crash a host):
/// * a route must exist before an irqfd is registered on its GSI
///   ([`RoutingError::NoRoute`]): KVM resolves the route at injection time, and an irqfd on
///   an unrouted GSI silently drops interrupts;
/// * an irqfd must be unregistered before its route is removed
///   ([`RoutingError::IrqfdStillRegistered`]): removing the route first has crashed AMD hosts
///   with AVIC/irq-bypass (cloud-hypervisor PR #3827 and #6348);
/// * resample irqfds are for irqchip GSIs only ([`RoutingError::ResampleNeedsIrqchip`]).
///
/// Use the same eventfd for the VFIO trigger and the irqfd, so that KVM's irq-bypass can
/// connect them to posted interrupts.
pub trait InterruptRouting: Send + Sync {
    /// Reserves a GSI for an MSI or MSI-X vector (above the 24 IOAPIC pins).
    fn allocate_gsi(&self) -> Result<u32, RoutingError>;
    /// Returns a GSI to the pool. Its route, if any, must already be removed.
    fn free_gsi(&self, gsi: u32) -> Result<(), RoutingError>;
    /// Adds or updates the MSI routes of several GSIs, then sends the whole table once.
    fn set_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> Result<(), RoutingError>;
    /// Adds or updates the MSI route of one GSI and sends the whole table.
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), RoutingError> {
        self.set_msi_routes(&[(gsi, msg)])
    }
    /// Removes the MSI route of `gsi` and sends the whole table. Fails while an irqfd is
    /// registered on it.
    fn remove_msi_route(&self, gsi: u32) -> Result<(), RoutingError>;
    /// `KVM_IRQFD`: a write to `fd` injects `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), RoutingError>;
    /// `KVM_IRQFD` with `KVM_IRQFD_FLAG_RESAMPLE`: `fd` asserts the level-triggered irqchip
    /// `gsi`; the guest's EOI deasserts it and signals `resample` (wire that to VFIO's INTx
    /// unmask eventfd).
    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), RoutingError>;
    /// Detaches `fd` from `gsi` (plain or resample irqfd).
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), RoutingError>;
}
