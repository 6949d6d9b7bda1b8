//! The `--device` parser (devices/src/vfio/naming.rs) on arbitrary bytes: the whole
//! value, the device-name part, a PCI address and a guest `addr=`. Nothing may panic,
//! every error must format, and what parses must be consistent: the spec keeps the value
//! as given, its device part parses alone to the same name, a PCI address prints in the
//! canonical form and parses back to itself, an `id=` is 1-32 of the allowed characters.
#![no_main]

use devices::vfio::naming::{parse_device_name, parse_device_spec, Bdf, DeviceName, GuestAddr};
use libfuzzer_sys::fuzz_target;

fn bdf_round_trip(b: Bdf) {
    let s = b.to_string();
    assert_eq!(s.parse::<Bdf>(), Ok(b), "{s}");
    assert!(b.device <= 0x1f && b.function <= 7, "{b:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse_device_spec(s) {
        Ok(spec) => {
            assert_eq!(spec.given, s);
            if !matches!(spec.name, DeviceName::Fd(_)) {
                assert_eq!(parse_device_name(&spec.name_given), Ok(spec.name.clone()));
            }
            if let Some(id) = &spec.id {
                assert!((1..=32).contains(&id.len()), "{id:?}");
                assert!(id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')));
            }
            if let Some(b) = spec.bdf {
                bdf_round_trip(b);
                assert!(matches!(spec.name, DeviceName::Group { .. }));
            }
            if let DeviceName::Bdf(b) = spec.name {
                bdf_round_trip(b);
            }
            if let Some(a) = spec.addr {
                assert!((1..=0x1f).contains(&a.slot) && a.function.is_none_or(|f| f <= 7));
            }
            assert!(!spec.managed_force || spec.managed);
            assert_eq!(s.parse(), Ok(spec));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match parse_device_name(s) {
        Ok(DeviceName::Bdf(b)) => bdf_round_trip(b),
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(b) = s.parse::<Bdf>() {
        bdf_round_trip(b);
    }
    if let Ok(a) = s.parse::<GuestAddr>() {
        assert!((1..=0x1f).contains(&a.slot) && a.function.is_none_or(|f| f <= 7));
    }
});
