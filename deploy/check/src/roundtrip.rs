//! Typed parse + serialize back: whatever the type does not know is lost, and the loss is the
//! finding.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    #[error("{id}: does not parse as {type_name}: {source}")]
    Parse {
        id: String,
        type_name: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{id}: {type_name} does not serialize: {source}")]
    Serialize {
        id: String,
        type_name: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{id}: fields lost or changed in a round trip through {type_name}:\n  {}", differences.join("\n  "))]
    Lossy {
        id: String,
        type_name: &'static str,
        differences: Vec<String>,
    },
}

/// Parses `value` as `T` and checks that serializing it gives `value` back exactly.
pub fn typed<T: DeserializeOwned + Serialize>(id: &str, value: &Value) -> Result<T, RoundTripError> {
    let type_name = std::any::type_name::<T>();
    let parsed: T = serde_json::from_value(value.clone()).map_err(|source| RoundTripError::Parse {
        id: id.to_string(),
        type_name,
        source,
    })?;
    let back = serde_json::to_value(&parsed).map_err(|source| RoundTripError::Serialize {
        id: id.to_string(),
        type_name,
        source,
    })?;
    let mut differences = Vec::new();
    diff("", value, &back, &mut differences);
    if differences.is_empty() {
        Ok(parsed)
    } else {
        Err(RoundTripError::Lossy {
            id: id.to_string(),
            type_name,
            differences,
        })
    }
}

/// Appends one line per JSON pointer where `before` and `after` differ.
pub fn diff(path: &str, before: &Value, after: &Value, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, va) in a {
                let p = format!("{path}/{key}");
                match b.get(key) {
                    Some(vb) => diff(&p, va, vb, out),
                    None => out.push(format!("{p}: dropped (was {va})")),
                }
            }
            for (key, vb) in b {
                if !a.contains_key(key) {
                    out.push(format!("{path}/{key}: added ({vb})"));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}/{i}"), va, vb, out);
            }
        }
        _ if before == after => {}
        _ => out.push(format!(
            "{}: {before} became {after}",
            if path.is_empty() { "/" } else { path }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_dropped_added_and_changed_paths() {
        let mut out = Vec::new();
        diff(
            "",
            &json!({"a": 1, "b": {"c": [1, 2]}, "d": [1], "e": "x"}),
            &json!({"a": 1, "b": {"c": [1, 3]}, "d": [1, 2], "f": true}),
            &mut out,
        );
        assert_eq!(
            out,
            [
                "/b/c/1: 2 became 3",
                "/d: [1] became [1,2]",
                "/e: dropped (was \"x\")",
                "/f: added (true)",
            ]
        );
    }

    #[test]
    fn typed_reports_a_key_the_type_does_not_know() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Small {
            a: u32,
        }
        let err = typed::<Small>("Small/x", &json!({"a": 1, "b": 2}))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "Small/x: fields lost or changed in a round trip through deploy_check::roundtrip::tests::typed_reports_a_key_the_type_does_not_know::Small:\n  /b: dropped (was 2)"
            )
        );
        assert!(typed::<Small>("Small/x", &json!({"a": 1})).is_ok());
    }
}
