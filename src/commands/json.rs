//! A minimal JSON writer: enough for `passvm devices --json` without a dependency.

use std::fmt::Write;

/// A JSON value.
pub enum Json {
    Null,
    Bool(bool),
    Num(u64),
    Str(String),
    Arr(Vec<Json>),
    /// Keys keep their order, so the output is stable.
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    pub fn opt_str(v: Option<impl Into<String>>) -> Json {
        v.map(|s| Json::Str(s.into())).unwrap_or(Json::Null)
    }

    pub fn opt_num(v: Option<u64>) -> Json {
        v.map(Json::Num).unwrap_or(Json::Null)
    }

    pub fn opt_bool(v: Option<bool>) -> Json {
        v.map(Json::Bool).unwrap_or(Json::Null)
    }

    /// Pretty-printed with two-space indents.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s.push('\n');
        s
    }

    fn write(&self, out: &mut String, indent: usize) {
        let pad = |n: usize| "  ".repeat(n);
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => escape(out, s),
            Json::Arr(items) if items.is_empty() => out.push_str("[]"),
            Json::Arr(items) => {
                out.push_str("[\n");
                for (i, v) in items.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    v.write(out, indent + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(indent));
                out.push(']');
            }
            Json::Obj(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Obj(fields) => {
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    escape(out, k);
                    out.push_str(": ");
                    v.write(out, indent + 1);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(indent));
                out.push('}');
            }
        }
    }
}

fn escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_nests() {
        let j = Json::Obj(vec![
            ("a", Json::Str("q\"\\\n\u{1}é".into())),
            (
                "b",
                Json::Arr(vec![Json::Num(1), Json::Null, Json::Bool(true)]),
            ),
            ("c", Json::Arr(vec![])),
        ]);
        assert_eq!(
            j.render(),
            "{\n  \"a\": \"q\\\"\\\\\\n\\u0001é\",\n  \"b\": [\n    1,\n    null,\n    true\n  ],\n  \"c\": []\n}\n"
        );
    }
}
