//! The `key=value,key=value` syntax shared by every passvm option that takes a list
//! (`--memory`, `--cpus`, `--serial`, `--device`), so each reads and fails the same way.
//!
//! A first item without `=` is the value of the option's first key (`--memory 1G` is
//! `--memory size=1G`, `--device 0000:00:04.0` is `--device path=0000:00:04.0`). Every key
//! must be known, given once and have a value; what a value means is the option's business.

use thiserror::Error;

/// What is wrong with an option list as a list (its values are checked by the option).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum OptionListError {
    /// A key the option does not know.
    #[error("unknown option {key:?} (known: {known})")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// The keys the option accepts, comma-separated.
        known: String,
    },
    /// The same key twice.
    #[error("option {0:?} is given twice; keep one")]
    DuplicateKey(String),
    /// A key with nothing after its `=`.
    #[error("option {0:?} has no value: give {0}=VALUE")]
    NoValue(String),
    /// An item after the first that is not `key=value`, or an empty item between commas.
    #[error("{0:?} after a ',' must be key=value")]
    NotKeyValue(String),
}

/// The `(key, value)` pairs of `input` in the order given, each key one of `keys`.
pub fn parse<'a>(
    input: &'a str,
    keys: &[&'a str],
) -> Result<Vec<(&'a str, &'a str)>, OptionListError> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (i, item) in input.split(',').enumerate() {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None if i == 0 && !keys.is_empty() => (keys[0], item.trim()),
            None => return Err(OptionListError::NotKeyValue(item.to_string())),
        };
        if !keys.contains(&key) {
            return Err(OptionListError::UnknownKey {
                key: key.to_string(),
                known: keys.join(", "),
            });
        }
        if value.is_empty() {
            return Err(OptionListError::NoValue(key.to_string()));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(OptionListError::DuplicateKey(key.to_string()));
        }
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 2] = ["size", "hugepages"];

    #[test]
    fn pairs_come_back_in_order_with_the_first_key_implied() {
        assert_eq!(
            parse("size=1G,hugepages=on", &KEYS),
            Ok(vec![("size", "1G"), ("hugepages", "on")])
        );
        assert_eq!(parse("1G", &KEYS), Ok(vec![("size", "1G")]));
        assert_eq!(
            parse("1G, hugepages = off", &KEYS),
            Ok(vec![("size", "1G"), ("hugepages", "off")])
        );
        assert_eq!(
            parse("/dev/vfio/3,id=a", &["path", "id"]),
            Ok(vec![("path", "/dev/vfio/3"), ("id", "a")])
        );
    }

    #[test]
    fn every_list_error_names_the_part_and_the_rule() {
        let e = |s| parse(s, &KEYS).unwrap_err();
        assert_eq!(
            e("size=1G,huge=on").to_string(),
            "unknown option \"huge\" (known: size, hugepages)"
        );
        assert_eq!(
            e("size=1G,size=2G"),
            OptionListError::DuplicateKey("size".into())
        );
        assert_eq!(
            e("1G,size=2G"),
            OptionListError::DuplicateKey("size".into())
        );
        assert_eq!(e("size="), OptionListError::NoValue("size".into()));
        assert_eq!(e(""), OptionListError::NoValue("size".into()));
        assert_eq!(e("size=1G,"), OptionListError::NotKeyValue("".into()));
        assert_eq!(
            e("size=1G,,hugepages=on"),
            OptionListError::NotKeyValue("".into())
        );
        assert_eq!(e("size=1G,on"), OptionListError::NotKeyValue("on".into()));
        assert!(e("size=1G,on").to_string().contains("must be key=value"));
    }
}
