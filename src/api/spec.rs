//! The OpenAPI document as served and committed.
//!
//! poem-openapi lists an operation's own responses and those of its error
//! type one after the other, so an operation that answers 404 both as its
//! own page and as a problem document had two `"404"` keys in one object:
//! JSON parsers keep only the last, and the page's answer vanished from the
//! document. Here each object's repeated keys are merged: objects key by
//! key (a response's `content` then lists every media type), anything else
//! keeps its first value. Key order is kept.
use indexmap::IndexMap;
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{MapAccess, SeqAccess, Visitor},
};

/// A JSON value whose objects keep their key order.
enum Value {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Value>),
    Object(IndexMap<String, Value>),
}

/// The document with repeated keys merged; the text unchanged should it not
/// parse (it always does: poem-openapi writes it).
pub fn merge_repeated_keys(spec: &str) -> String {
    match serde_json::from_str::<Value>(spec) {
        Ok(v) => serde_json::to_string_pretty(&v).expect("a JSON value serialises"),
        Err(_) => spec.to_string(),
    }
}

fn merge(first: Value, second: Value) -> Value {
    match (first, second) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, v) in b {
                insert_merging(&mut a, k, v);
            }
            Value::Object(a)
        }
        (first, _) => first,
    }
}

/// Inserts `k`, merged into its earlier value when `map` has one.
fn insert_merging(map: &mut IndexMap<String, Value>, k: String, v: Value) {
    match map.get_mut(&k) {
        Some(slot) => {
            let old = std::mem::replace(slot, Value::Null);
            *slot = merge(old, v);
        }
        None => {
            map.insert(k, v);
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
                Ok(Value::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
                Ok(Value::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Value, E> {
                serde_json::Number::from_f64(n)
                    .map(Value::Number)
                    .ok_or_else(|| E::custom("not a JSON number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut object = IndexMap::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    insert_merging(&mut object, k, v);
                }
                Ok(Value::Object(object))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Number(n) => n.serialize(s),
            Value::String(v) => s.serialize_str(v),
            Value::Array(items) => items.serialize(s),
            Value::Object(map) => map.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge_repeated_keys;

    #[test]
    fn repeated_keys_merge_and_order_is_kept() {
        let spec = r#"{"z":1,"responses":{"200":{"description":"ok"},"404":{"description":"page","content":{"text/html":{}}},"404":{"description":"problem","content":{"application/problem+json":{}}}},"a":[1,2.5,null,true]}"#;
        let merged: serde_json::Value = serde_json::from_str(&merge_repeated_keys(spec)).unwrap();
        assert_eq!(merged["responses"]["404"]["description"], "page");
        let content = merged["responses"]["404"]["content"].as_object().unwrap();
        assert!(
            content.contains_key("text/html") && content.contains_key("application/problem+json")
        );
        let text = merge_repeated_keys(spec);
        assert!(text.find("\"z\"").unwrap() < text.find("\"responses\"").unwrap());
        assert!(text.find("\"200\"").unwrap() < text.find("\"404\"").unwrap());
        assert_eq!(merged["a"], serde_json::json!([1, 2.5, null, true]));
    }
}
