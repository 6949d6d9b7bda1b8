//! Where passthrough functions go on the guest's bus 0: functions of one host slot kept
//! together in one guest slot, `addr=SLOT[.FN]` pins honoured, the rest in `--device`
//! order.

use devices::pci::host_bridge::PCI_SLOTS;
use devices::vfio::assignment::Placement;
use devices::vfio::discovery::ResolvedDevice;

/// The devices cannot be placed as asked.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// `addr=` cannot be honoured.
    #[error("--device {given}: {why}")]
    Addr {
        /// The device as the user named it.
        given: String,
        /// What is wrong and what to do.
        why: String,
    },
    /// More guest slots needed than bus 0 has.
    #[error("the devices need {0} PCI slots; bus 0 has 31: pass fewer devices (functions of one host slot share one)")]
    TooManySlots(usize),
}

/// Where each planned device goes on bus 0, in plan order.
///
/// Functions of one host slot stay together in one guest slot, with the multifunction
/// bit set, so a GPU and its audio function look as they do on the host. They keep
/// their function numbers when the host's function 0 is among them; otherwise they are
/// renumbered from 0 in host order, because a guest scans a slot only through its
/// function 0. Every other device (and an mdev, which has no host slot) gets function 0
/// of a slot of its own. `addr=SLOT[.FN]` pins a device's slot (and function); the other
/// slots are handed out from 1 (0 is the host bridge), skipping pinned ones, in the
/// order of each group's first `--device`.
pub fn placements(devices: &[ResolvedDevice]) -> Result<Vec<Placement>, PlacementError> {
    /// Domain, bus and device of a host function.
    type HostSlot = (u32, u8, u8);
    let host_slot =
        |d: &ResolvedDevice| -> Option<HostSlot> { d.bdf.map(|b| (b.domain, b.bus, b.device)) };
    let bad = |d: &ResolvedDevice, why: String| PlacementError::Addr {
        given: d.given_as.clone(),
        why,
    };
    // Groups in order of first appearance: (host slot or None, members' indexes).
    let mut groups: Vec<(Option<HostSlot>, Vec<usize>)> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        match host_slot(d).and_then(|k| groups.iter_mut().find(|g| g.0 == Some(k))) {
            Some(g) => g.1.push(i),
            None => groups.push((host_slot(d), vec![i])),
        }
    }
    // The slot each group asks for: every addr= in a group must name the same slot, and
    // no two groups the same one.
    let mut pinned: Vec<Option<u8>> = Vec::with_capacity(groups.len());
    for (_, members) in &groups {
        let mut want: Option<(u8, usize)> = None;
        for &i in members {
            if let Some(a) = devices[i].addr {
                match want {
                    Some((s, first)) if s != a.slot => {
                        return Err(bad(
                            &devices[i],
                            format!(
                                "addr={:02x} puts it in another slot than {} (addr={s:02x}), but both are functions of one host slot and stay together",
                                a.slot, devices[first].given_as
                            ),
                        ))
                    }
                    _ => want = Some((a.slot, i)),
                }
            }
        }
        if let Some((s, i)) = want {
            if pinned.contains(&Some(s)) {
                return Err(bad(
                    &devices[i],
                    format!("addr={s:02x} is taken by another --device; give each slot once"),
                ));
            }
        }
        pinned.push(want.map(|w| w.0));
    }
    let mut out = vec![
        Placement {
            slot: 0,
            function: 0,
            multifunction: false,
        };
        devices.len()
    ];
    let mut next = 1u8;
    for ((_, members), pin) in groups.iter().zip(&pinned) {
        let slot = match pin {
            Some(s) => *s,
            None => {
                while pinned.contains(&Some(next)) {
                    next += 1;
                }
                let s = next;
                next += 1;
                s
            }
        };
        if slot >= PCI_SLOTS {
            return Err(PlacementError::TooManySlots(groups.len()));
        }
        let function_of = |i: usize| devices[i].bdf.map_or(0, |b| b.function);
        let keep = members.iter().any(|&i| function_of(i) == 0);
        let mut by_host: Vec<usize> = members.clone();
        by_host.sort_by_key(|&i| function_of(i));
        let mut used = [None::<usize>; 8];
        for (k, &i) in by_host.iter().enumerate() {
            let auto = if keep { function_of(i) } else { k as u8 };
            let function = devices[i].addr.and_then(|a| a.function).unwrap_or(auto);
            if let Some(other) = used[usize::from(function)].replace(i) {
                return Err(bad(
                    &devices[i],
                    format!(
                        "function {slot:02x}.{function} is also {}'s; give each function once",
                        devices[other].given_as
                    ),
                ));
            }
            out[i] = Placement {
                slot,
                function,
                multifunction: members.len() > 1,
            };
        }
        if used[0].is_none() {
            return Err(bad(
                &devices[by_host[0]],
                format!(
                    "slot {slot:02x} would have no function 0, and a guest finds a slot's functions through function 0; drop the .FN of addr="
                ),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::vfio::discovery::DeviceKind;

    fn device(bdf: Option<&str>) -> ResolvedDevice {
        let name = bdf
            .unwrap_or("6a1c1e39-7b6f-4b7c-9c3f-0f3f3c1a2b4d")
            .to_string();
        ResolvedDevice {
            given_as: name.clone(),
            kind: if bdf.is_some() {
                DeviceKind::Pci
            } else {
                DeviceKind::Mdev
            },
            bdf: bdf.map(|b| b.parse().unwrap()),
            sysfs: format!("/sys/bus/pci/devices/{name}").into(),
            name,
            parent: None,
            mdev_type: None,
            vendor: None,
            device: None,
            class: None,
            driver: None,
            vfio_bound: true,
            group: None,
            group_members: Vec::new(),
            group_node: None,
            cdev: None,
            cdev_absent: None,
            fd: None,
            id: None,
            managed: false,
            managed_force: false,
            rom: Default::default(),
            addr: None,
            port: None,
        }
    }

    fn with_addr(bdf: &str, addr: &str) -> ResolvedDevice {
        let mut d = device(Some(bdf));
        d.addr = Some(addr.parse().unwrap());
        d
    }

    #[test]
    fn addr_pins_slots_and_functions_and_refuses_what_a_guest_could_not_see() {
        let devices = [
            device(Some("0000:03:00.0")),
            with_addr("0000:04:00.0", "01"),
            with_addr("0000:0a:00.1", "1e"),
            device(Some("0000:0a:00.0")),
        ];
        let got: Vec<_> = placements(&devices)
            .unwrap()
            .iter()
            .map(|p| (p.slot, p.function, p.multifunction))
            .collect();
        assert_eq!(
            got,
            [
                (2, 0, false),
                (1, 0, false),
                (0x1e, 1, true),
                (0x1e, 0, true)
            ]
        );

        let e = |devs: &[ResolvedDevice]| placements(devs).unwrap_err().to_string();
        let m = e(&[
            with_addr("0000:03:00.0", "05"),
            with_addr("0000:04:00.0", "05"),
        ]);
        assert!(m.contains("addr=05 is taken"), "{m}");
        let m = e(&[
            with_addr("0000:0a:00.0", "05"),
            with_addr("0000:0a:00.1", "06"),
        ]);
        assert!(m.contains("stay together"), "{m}");
        let m = e(&[with_addr("0000:03:00.0", "05.1")]);
        assert!(m.contains("no function 0"), "{m}");
        let m = e(&[
            with_addr("0000:0a:00.0", "05.1"),
            device(Some("0000:0a:00.1")),
        ]);
        assert!(m.contains("function 05.1 is also"), "{m}");
        // A pinned function 0 moves the host's function 1 nowhere: both stay.
        let ok = placements(&[
            with_addr("0000:0b:00.3", "07.0"),
            device(Some("0000:0b:00.4")),
        ])
        .unwrap();
        assert_eq!((ok[0].slot, ok[0].function, ok[1].function), (7, 0, 1));
    }

    fn places(bdfs: &[Option<&str>]) -> Vec<(u8, u8, bool)> {
        let devices: Vec<_> = bdfs.iter().map(|b| device(*b)).collect();
        placements(&devices)
            .unwrap()
            .iter()
            .map(|p| (p.slot, p.function, p.multifunction))
            .collect()
    }

    #[test]
    fn functions_of_one_host_slot_share_a_guest_slot() {
        // A GPU and its audio function, given in any order, around a NIC.
        assert_eq!(
            places(&[
                Some("0000:0a:00.1"),
                Some("0000:03:00.0"),
                Some("0000:0a:00.0")
            ]),
            [(1, 1, true), (2, 0, false), (1, 0, true)]
        );
        // Without the host's function 0: renumbered from 0 in host order.
        assert_eq!(
            places(&[Some("0000:0b:02.5"), Some("0000:0b:02.3")]),
            [(1, 1, true), (1, 0, true)]
        );
        // The same slot number on another bus or domain is another slot; mdevs have none.
        assert_eq!(
            places(&[Some("0000:0a:00.0"), Some("0001:0a:00.1"), None, None]),
            [(1, 0, false), (2, 0, false), (3, 0, false), (4, 0, false)]
        );
    }

    #[test]
    fn more_slots_than_bus_0_has_is_an_error_naming_the_count() {
        let bdfs: Vec<String> = (0..32).map(|i| format!("0000:{i:02x}:00.0")).collect();
        let devices: Vec<_> = bdfs.iter().map(|b| device(Some(b))).collect();
        let e = placements(&devices).unwrap_err().to_string();
        assert!(e.contains("need 32 PCI slots"), "{e}");
        assert_eq!(placements(&devices[..31]).unwrap().len(), 31);
    }
}
