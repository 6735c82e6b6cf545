//! A strict type for the part of the Prometheus Operator's `monitoring.coreos.com/v1`
//! ServiceMonitor the chart renders. Unknown keys are rejected, so a misspelt key fails the parse
//! (k8s-openapi has no type for this custom resource).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_label: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// Name of the Service port.
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Prometheus duration (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<String>,
}

impl ServiceMonitor {
    pub const API_VERSION: &'static str = "monitoring.coreos.com/v1";
    pub const KIND: &'static str = "ServiceMonitor";
}

/// Seconds in a Prometheus duration of one unit (`500ms`, `30s`, `5m`, `1h`); `None` otherwise.
pub fn duration_seconds(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse::<u32>().ok()?.into();
    match unit {
        "ms" => Some(n / 1000.0),
        "s" => Some(n),
        "m" => Some(n * 60.0),
        "h" => Some(n * 3600.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::duration_seconds;

    #[test]
    fn prometheus_durations_of_one_unit() {
        assert_eq!(duration_seconds("500ms"), Some(0.5));
        assert_eq!(duration_seconds("30s"), Some(30.0));
        assert_eq!(duration_seconds("5m"), Some(300.0));
        assert_eq!(duration_seconds("1h"), Some(3600.0));
        assert_eq!(duration_seconds("1d"), None);
        assert_eq!(duration_seconds("s"), None);
        assert_eq!(duration_seconds("10"), None);
    }
}
