//! The CPUID a vCPU sees: what KVM supports, adjusted for this vCPU's place in the topology.
//!
//! Start from `KVM_GET_SUPPORTED_CPUID`: KVM already removes what it cannot virtualise and
//! adds its paravirtual signature leaves (0x4000_0000 "KVMKVMKVM", 0x4000_0001 features such
//! as kvm-clock), which passvm passes through unchanged. Then, per vCPU:
//!
//! - leaf 1: `EBX[31:24]` = initial APIC id (= vCPU index, which is the APIC id KVM assigns),
//!   `EBX[23:16]` = logical processors per package, EDX.HTT when there is more than one,
//!   ECX bit 31 "hypervisor present" so the guest looks for the KVM leaves, and ECX bit 24
//!   "TSC-deadline timer" when KVM emulates it (`KVM_CAP_TSC_DEADLINE_TIMER`: KVM lists it
//!   in the emulated, not the supported, CPUID). With it the guest programs one-shot
//!   deadlines instead of calibrating a periodic LAPIC timer against the PIT at boot: fewer
//!   interrupts to inject, and no calibration (Cloud Hypervisor and Firecracker set it too);
//! - leaf 4 (Intel cache topology): `EAX[31:26]` = cores per package − 1 and `EAX[25:14]` =
//!   threads sharing the cache − 1 (each vCPU is a core of its own, L1/L2 private, L3 shared);
//! - leaves 0xB and 0x1F (x2APIC topology), rebuilt from scratch: KVM reports only an
//!   empty subleaf 0 for them ("no topology"), and a guest that finds subleaf 0 alone takes
//!   every vCPU for a package of its own. passvm writes subleaf 0 = SMT level (1 thread,
//!   shift 0), subleaf 1 = core level (N, shift = bits needed for N), subleaf 2 = the
//!   terminating invalid level, each with EDX = x2APIC id. 0x1F only when the maximum basic
//!   leaf reaches it (Linux prefers 0x1F, then AMD's 0x8000_0026, then 0xB);
//! - AMD: 0x8000_0008 ECX (core count, APIC id size) and 0x8000_001E (extended APIC id,
//!   one thread per core, one node).
//!
//! The topology is one socket with N single-threaded cores: Linux then sizes its per-package
//! structures right, and no core claims a sibling thread that does not exist.
//!
//! Deliberately untouched: leaf 6 (KVM only reports ARAT there, which is true for a KVM
//! LAPIC timer), the PMU leaf 0xA (KVM reports what it emulates), XSAVE leaf 0xD (sizes
//! must match what KVM saves), and the VMX/SVM bits (KVM only offers them with nested
//! virtualisation enabled, which is the host's choice).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// The CPUID table for vCPU `id` of `vcpus`, from KVM's supported table; `tsc_deadline`:
/// KVM emulates the LAPIC's TSC-deadline mode (`KVM_CAP_TSC_DEADLINE_TIMER`).
pub fn filter(
    supported: &CpuId,
    id: u8,
    vcpus: u8,
    tsc_deadline: bool,
) -> Result<CpuId, vmm_sys_util::fam::Error> {
    let apic_id = u32::from(id);
    let count = u32::from(vcpus.max(1));
    // Bits of the APIC id that number the cores: ceil(log2(count)).
    let core_bits = u32::BITS - (count - 1).leading_zeros();
    let max_basic = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);

    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_TOPOLOGY && e.function != LEAF_TOPOLOGY_V2)
        .copied()
        .collect();
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
            }
            // Only subleaves that describe a cache (type in EAX[4:0] != 0).
            LEAF_CACHE if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                let cores = (count - 1).min(63);
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (cores << 26);
            }
            LEAF_AMD_SIZE => {
                // ECX[15:12] = APIC id bits for cores, ECX[7:0] = cores − 1.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | ((count - 1) & 0xff);
            }
            LEAF_AMD_EXT_APIC => {
                e.eax = apic_id;
                // EBX[15:8] = threads per core − 1 = 0, EBX[7:0] = core id.
                e.ebx = (e.ebx & !0xffff) | (apic_id & 0xff);
                // ECX[10:8] = nodes per package − 1 = 0, ECX[7:0] = node id 0.
                e.ecx &= !0x7ff;
            }
            _ => {}
        }
    }
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if max_basic >= leaf {
            entries
                .extend((0..3).map(|index| topology_level(leaf, index, apic_id, count, core_bits)));
        }
    }
    CpuId::from_entries(&entries)
}

/// Subleaf `index` of an x2APIC topology leaf: SMT, core, then the invalid terminator.
fn topology_level(
    function: u32,
    index: u32,
    apic_id: u32,
    count: u32,
    core_bits: u32,
) -> kvm_cpuid_entry2 {
    let (shift, logical, kind) = match index {
        0 => (0, 1, LEVEL_TYPE_SMT),
        1 => (core_bits, count, LEVEL_TYPE_CORE),
        _ => (0, 0, 0),
    };
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: logical,
        ecx: (kind << 8) | (index & 0xff),
        edx: apic_id,
        ..Default::default()
    }
}

/// The host CPU's physical address width, as KVM reports it to guests (CPUID
/// 0x80000008 EAX[7:0]); 36 bits, the architectural minimum, when it does not.
pub fn host_phys_bits(kvm: &kvm_ioctls::Kvm) -> u8 {
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .ok()
        .and_then(|c| {
            c.as_slice()
                .iter()
                .find(|e| e.function == LEAF_AMD_SIZE)
                .map(|e| (e.eax & 0xff) as u8)
        })
        .filter(|b| *b >= 36)
        .unwrap_or(36)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, flags: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: 0,
            ebx: 0,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        let mut leaf0 = entry(0, 0, 0);
        leaf0.eax = 0xd; // max basic leaf: 0xB yes, 0x1F no
        let mut leaf1 = entry(1, 0, 0);
        leaf1.ebx = 0x0001_0800; // CLFLUSH line size, host APIC id 1, 1 logical
        leaf1.ecx = 0x0000_0001;
        let mut l1d = entry(4, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        l1d.eax = 0x0000_0121; // data cache, level 1
        let mut l3 = entry(4, 3, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        l3.eax = 0x0000_0163; // unified cache, level 3
        let kvm = entry(0x4000_0000, 0, 0);
        CpuId::from_entries(&[
            leaf0,
            leaf1,
            l1d,
            l3,
            // What KVM reports: an empty subleaf 0 ("no topology").
            entry(0xb, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
            entry(0x8000_0008, 0, 0),
            entry(0x8000_001e, 0, 0),
            kvm,
        ])
        .unwrap()
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        for (id, vcpus) in [(0u8, 1u8), (1, 2), (5, 8)] {
            let c = filter(&sample(), id, vcpus, false).unwrap();
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(id));
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(vcpus));
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_eq!(l1.ecx & 1, 1, "other feature bits kept");
            assert_eq!(l1.edx & EDX_HTT != 0, vcpus > 1);
        }
    }

    #[test]
    fn tsc_deadline_follows_what_kvm_emulates() {
        let on = find(&filter(&sample(), 0, 1, true).unwrap(), 1, 0);
        assert_ne!(on.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(on.ecx & 1, 1, "other feature bits kept");
        let off = find(&filter(&sample(), 0, 1, false).unwrap(), 1, 0);
        assert_eq!(off.ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn x2apic_topology_is_one_package_of_single_thread_cores() {
        let c = filter(&sample(), 3, 4, false).unwrap();
        let smt = find(&c, 0xb, 0);
        let core = find(&c, 0xb, 1);
        let end = find(&c, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        assert_eq!((end.ebx, (end.ecx >> 8) & 0xff, end.edx), (0, 0, 3));
        assert_eq!(
            c.as_slice().iter().filter(|e| e.function == 0xb).count(),
            3,
            "KVM's empty subleaf replaced, not kept"
        );
        assert!(
            c.as_slice().iter().all(|e| e.function != 0x1f),
            "no 0x1F beyond the maximum basic leaf"
        );
        // 3 vCPUs still need 2 bits of core id.
        let c = filter(&sample(), 0, 3, false).unwrap();
        assert_eq!(find(&c, 0xb, 1).eax, 2);
        let c = filter(&sample(), 0, 1, false).unwrap();
        assert_eq!(find(&c, 0xb, 1).eax, 0);
    }

    #[test]
    fn cache_and_amd_leaves_follow_the_vcpu_count() {
        let c = filter(&sample(), 2, 4, false).unwrap();
        let l1d = find(&c, 4, 0);
        assert_eq!(l1d.eax >> 26, 3, "cores per package − 1");
        assert_eq!((l1d.eax >> 14) & 0xfff, 0, "L1 private");
        assert_eq!(l1d.eax & 0x3fff, 0x121, "cache description kept");
        assert_eq!((find(&c, 4, 3).eax >> 14) & 0xfff, 3, "L3 shared by all");
        assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xff, 3);
        assert_eq!((find(&c, 0x8000_0008, 0).ecx >> 12) & 0xf, 2);
        assert_eq!(find(&c, 0x8000_001e, 0).eax, 2);
        assert_eq!(
            find(&c, 0x4000_0000, 0),
            entry(0x4000_0000, 0, 0),
            "KVM leaf as KVM gave it"
        );
    }
}
