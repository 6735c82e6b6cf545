//! Multi-document YAML (what `helm template` prints) split into Kubernetes objects.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("YAML document {index}: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("YAML document {index}: not a mapping with apiVersion and kind")]
    NotAnObject { index: usize },
}

/// One object of a manifest: its `apiVersion`, `kind`, `metadata.name` and the whole document.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub value: Value,
}

impl Object {
    /// `Kind/name`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// Every non-empty document of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|source| ManifestError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let field = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            return Err(ManifestError::NotAnObject { index });
        };
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        objects.push(Object {
            api_version,
            kind,
            name,
            value,
        });
    }
    Ok(objects)
}

/// A file generated from a rendering (`deploy/kubernetes/*.yaml`): its header, every line of which
/// is a comment, and the rendering after it (from the first `---` line on). `None` when the file
/// has no such header.
pub fn split_generated(text: &str) -> Option<(&str, &str)> {
    let body_start = text.find("\n---\n")? + 1;
    let (header, body) = text.split_at(body_start);
    header
        .lines()
        .all(|line| line.starts_with('#'))
        .then_some((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_skips_empty_ones_and_names_objects() {
        let text = "---\n# comment only\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n";
        let objects = parse(text).unwrap();
        let ids: Vec<String> = objects.iter().map(Object::id).collect();
        assert_eq!(ids, ["ConfigMap/a", "Service/b"]);
        assert_eq!(objects[1].api_version, "v1");
    }

    #[test]
    fn a_document_without_kind_is_an_error_naming_it() {
        let err = parse("apiVersion: v1\nkind: ConfigMap\n---\nfoo: bar\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "YAML document 1: not a mapping with apiVersion and kind"
        );
        let err = parse("a: [\n").unwrap_err();
        assert!(err.to_string().starts_with("YAML document 0: "), "{err}");
    }

    #[test]
    fn a_generated_file_splits_into_its_comment_header_and_the_rendering() {
        let text = "# generated\n# do not edit\n---\nkind: A\n";
        assert_eq!(
            split_generated(text),
            Some(("# generated\n# do not edit\n", "---\nkind: A\n"))
        );
        assert_eq!(split_generated("kind: B\n---\nkind: A\n"), None);
        assert_eq!(split_generated("# only a header\n"), None);
    }
}
