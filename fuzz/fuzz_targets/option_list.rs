//! The `key=value,...` parser every list option shares (devices/src/option_list.rs), on
//! arbitrary UTF-8 with the VMM's real key sets and with arbitrary ones. On success every
//! pair's key is one of the keys and appears once, every value is non-empty and trimmed,
//! there is one pair per item, an item without `=` can only be the first and takes the
//! first key, and printing the pairs back as `k=v,...` parses to the same pairs. Errors
//! must format.
#![no_main]

use arbitrary::Arbitrary;
use devices::option_list::parse;
use libfuzzer_sys::fuzz_target;

/// The key lists src/config.rs and `--device` pass.
const KEY_SETS: [&[&str]; 5] = [
    &["boot"],
    &["size", "hugepages", "dma_map"],
    &["mode", "file"],
    &[
        "path", "fd", "id", "bdf", "managed", "rombar", "romfile", "addr",
    ],
    &[],
];

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    set: u8,
    own_keys: Option<Vec<&'a str>>,
    text: &'a str,
}

fuzz_target!(|input: Input| {
    let keys: Vec<&str> = match &input.own_keys {
        Some(k) => k.iter().take(8).copied().collect(),
        None => KEY_SETS[usize::from(input.set) % KEY_SETS.len()].to_vec(),
    };
    let text = input.text;
    let got = parse(text, &keys);
    assert_eq!(got, parse(text, &keys), "deterministic");
    let pairs = match got {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let items: Vec<&str> = text.split(',').collect();
    assert_eq!(pairs.len(), items.len(), "{text:?}");
    for (i, ((k, v), item)) in pairs.iter().zip(&items).enumerate() {
        assert!(keys.contains(k), "{k:?} not in {keys:?}");
        assert!(!v.is_empty() && *v == v.trim(), "value {v:?}");
        assert_eq!(
            pairs.iter().filter(|(k2, _)| k2 == k).count(),
            1,
            "{k:?} twice in {text:?}"
        );
        if !item.contains('=') {
            assert_eq!((i, *k), (0, keys[0]), "bare item {item:?}");
        }
    }
    let clean = keys
        .iter()
        .all(|k| !k.is_empty() && !k.contains([',', '=']) && *k == k.trim());
    if clean {
        let again: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let again = again.join(",");
        assert_eq!(
            parse(&again, &keys),
            Ok(pairs.clone()),
            "{again:?} from {text:?}"
        );
    }
});
