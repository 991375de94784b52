//! Telemetry settings from the standard OpenTelemetry environment variables (and `RUST_LOG`).

use std::{fmt, path::PathBuf};

use crate::TelemetryError;

/// How traces leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub protocol: Protocol,
    /// Used as given: for HTTP it ends in `/v1/traces`.
    pub endpoint: String,
    /// PEM file of the CA(s) an `https://` collector's certificate is checked against, besides
    /// the system's (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` or `OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub certificate: Option<PathBuf>,
}

/// How webhook and API request spans are exported (see `lean.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSpans {
    /// Through the OpenTelemetry SDK, like every other span.
    Sdk,
    /// Encoded and sent by the lean OTLP/HTTP path; `always_on`: sampled even under an
    /// unsampled parent (`OTEL_TRACES_SAMPLER=always_on`), else parent-based (the default).
    Lean { always_on: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `service.name` of every span: `OTEL_SERVICE_NAME`, else the service's own name.
    pub service_name: String,
    /// `RUST_LOG`, else `info`.
    pub log_filter: String,
    /// `None`: spans are made (their ids appear in logs, records and commits) but not sent.
    pub export: Option<Export>,
    /// `OTEL_SDK_DISABLED=true`: no OpenTelemetry at all, only logs.
    pub disabled: bool,
    /// The lean path when it gives what the SDK would: OTLP/HTTP, the default parent-based
    /// always-on sampler (or always-on), and no exporter headers, compression or timeout to honour.
    pub request_spans: RequestSpans,
}

impl Settings {
    /// Reads `OTEL_SERVICE_NAME`, `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER` (`none` turns
    /// export off), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base: `/v1/traces` is appended for HTTP),
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`,
    /// the default, or `grpc`), `RUST_LOG`, and
    /// `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` or `OTEL_EXPORTER_OTLP_CERTIFICATE` (a CA file for
    /// an `https://` collector, http/protobuf only). The sampler (`OTEL_TRACES_SAMPLER`,
    /// `OTEL_TRACES_SAMPLER_ARG`), `OTEL_RESOURCE_ATTRIBUTES` and the exporter's headers and
    /// timeout are read by the OpenTelemetry SDK itself.
    pub fn from_env(default_service_name: &str) -> Result<Self, TelemetryError> {
        Self::from_vars(default_service_name, |k| std::env::var(k).ok())
    }

    pub fn from_vars(default_service_name: &str, var: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        let var = |k: &str| var(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let service_name = var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service_name.to_string());
        let log_filter = var("RUST_LOG").unwrap_or_else(|| "info".to_string());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let exporter_off = var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let (protocol_var, protocol) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(p)),
            None => ("OTEL_EXPORTER_OTLP_PROTOCOL", var("OTEL_EXPORTER_OTLP_PROTOCOL")),
        };
        let protocol = match protocol.as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => return Err(TelemetryError::Protocol { var: protocol_var, value: other.to_string() }),
        };
        let endpoint = match (var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(exact), _) => Some(exact),
            (None, Some(base)) if protocol == Protocol::HttpProtobuf => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
            (None, Some(base)) => Some(base),
            (None, None) => None,
        };
        let certificate = var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE").or_else(|| var("OTEL_EXPORTER_OTLP_CERTIFICATE")).map(PathBuf::from);
        let export = endpoint.filter(|_| !exporter_off && !disabled).map(|endpoint| Export { protocol, endpoint, certificate });
        let sdk_options = ["HEADERS", "COMPRESSION", "TIMEOUT"]
            .iter()
            .any(|o| var(&format!("OTEL_EXPORTER_OTLP_{o}")).is_some() || var(&format!("OTEL_EXPORTER_OTLP_TRACES_{o}")).is_some());
        let request_spans = match var("OTEL_TRACES_SAMPLER").as_deref() {
            _ if protocol != Protocol::HttpProtobuf || sdk_options => RequestSpans::Sdk,
            None | Some("parentbased_always_on") => RequestSpans::Lean { always_on: false },
            Some("always_on") => RequestSpans::Lean { always_on: true },
            Some(_) => RequestSpans::Sdk,
        };
        Ok(Settings { service_name, log_filter, export, disabled, request_spans })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, TelemetryError> {
        Settings::from_vars("ci-service", |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn nothing_set_means_no_export_and_the_default_name() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.export, None);
        assert_eq!(s.service_name, "ci-service");
        assert_eq!(s.log_filter, "info");
        assert!(!s.disabled);
    }

    #[test]
    fn base_endpoint_gets_the_signal_path_for_http_only() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318/")]).unwrap();
        assert_eq!(
            s.export,
            Some(Export { protocol: Protocol::HttpProtobuf, endpoint: "http://jaeger:4318/v1/traces".into(), certificate: None })
        );
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap();
        assert_eq!(s.export, Some(Export { protocol: Protocol::Grpc, endpoint: "http://jaeger:4317".into(), certificate: None }));
    }

    #[test]
    fn signal_specific_variables_win() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:9999/custom"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "ci-eu"),
        ])
        .unwrap();
        assert_eq!(s.export, Some(Export { protocol: Protocol::HttpProtobuf, endpoint: "http://b:9999/custom".into(), certificate: None }));
        assert_eq!(s.service_name, "ci-eu");
        let s =
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example:4318"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem")])
                .unwrap();
        assert_eq!(s.export.unwrap().certificate, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn export_can_be_turned_off() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), ("OTEL_TRACES_EXPORTER", "none")]).unwrap();
        assert_eq!(s.export, None);
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), ("OTEL_SDK_DISABLED", "TRUE")]).unwrap();
        assert_eq!(s.export, None);
        assert!(s.disabled);
    }

    #[test]
    fn unsupported_protocol_is_named() {
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
        assert_eq!(e.to_string(), "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\" is not supported: use `http/protobuf` or `grpc`");
    }

    #[test]
    fn request_spans_take_the_lean_path_only_where_it_gives_what_the_sdk_would() {
        let http = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318");
        assert_eq!(settings(&[http]).unwrap().request_spans, RequestSpans::Lean { always_on: false });
        assert_eq!(settings(&[http, ("OTEL_TRACES_SAMPLER", "always_on")]).unwrap().request_spans, RequestSpans::Lean { always_on: true });
        for other in [
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer x"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ] {
            assert_eq!(settings(&[http, other]).unwrap().request_spans, RequestSpans::Sdk, "{other:?}");
        }
    }
}
