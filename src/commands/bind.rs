//! `passvm bind BDF` and `passvm unbind BDF`.

use devices::vfio::discovery::group::{blockers, members};
use devices::vfio::discovery::{bind as do_bind, unbind as do_unbind, BindOutcome, DiscoveryError};
use devices::vfio::discovery::{KernelSysfs, Roots};
use devices::vfio::naming::Bdf;

fn parse(bdf: &str) -> Result<Bdf, DiscoveryError> {
    Ok(bdf.parse::<Bdf>()?)
}

/// Moves a device to vfio-pci (refused while the host uses it, unless `force`) and says
/// what else its group needs.
pub fn bind(bdf: &str, force: bool) -> Result<(), DiscoveryError> {
    let bdf = parse(bdf)?;
    let roots = Roots::host();
    match do_bind(&bdf, &roots, &KernelSysfs, force)? {
        BindOutcome::AlreadyBound { driver } => println!("{bdf}: already bound to {driver}"),
        BindOutcome::Bound { previous } => println!(
            "{bdf}: {} -> vfio-pci (`passvm unbind {bdf}` restores it)",
            previous.as_deref().unwrap_or("no driver")
        ),
    }
    let group = devices::vfio::discovery::sysfs::link_name(
        &roots.sys_path(format!("bus/pci/devices/{bdf}/iommu_group")),
    )
    .and_then(|g| g.parse::<u32>().ok());
    if let Some(g) = group {
        let m = members(&roots, g).unwrap_or_default();
        for other in blockers(&m, &[]) {
            println!(
                "note: IOMMU group {g} also holds {} on {}; the group is not viable until it is bound too: passvm bind {}",
                other.name,
                other.driver.as_deref().unwrap_or("?"),
                other.name
            );
        }
    }
    Ok(())
}

/// Returns a device to its recorded driver.
pub fn unbind(bdf: &str) -> Result<(), DiscoveryError> {
    let bdf = parse(bdf)?;
    let out = do_unbind(&bdf, &Roots::host(), &KernelSysfs)?;
    let now = out.now.as_deref().unwrap_or("no driver");
    if out.had_record {
        println!("{bdf}: restored to {now}");
    } else {
        println!("{bdf}: no record of an earlier driver; the kernel chose {now}");
    }
    Ok(())
}
