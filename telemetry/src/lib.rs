//! What both services share to be observed: the log subscriber, OpenTelemetry traces exported
//! over OTLP (HTTP/protobuf or gRPC, chosen and addressed by the standard `OTEL_*` variables),
//! the W3C trace context carried across HTTP and NATS headers ([`context`]), and Prometheus text
//! rendering ([`metrics`]), and the health probe its container images use ([`probe`]). It
//! decides how things are reported, never what a service traces or counts.

pub mod context;
mod lean;
mod logfmt;
pub mod metrics;
pub mod probe;
mod settings;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};
use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt, Layer};

pub use settings::{Export, Protocol, RequestSpans, Settings};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{var}={value:?} is not supported: use `http/protobuf` or `grpc`")]
    Protocol { var: &'static str, value: String },
    #[error("cannot build the OTLP {protocol} exporter for {endpoint}: {message}")]
    Exporter { protocol: Protocol, endpoint: String, message: String },
    #[error("cannot use the OTLP CA file {path}: {message}")]
    Certificate { path: std::path::PathBuf, message: String },
    #[error("OTEL_EXPORTER_OTLP_CERTIFICATE is supported with http/protobuf only, not grpc")]
    GrpcCertificate,
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// The installed subscriber and trace pipeline. Dropping it (or [`Telemetry::shutdown`]) sends
/// the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Reads the settings from the environment and installs them (see [`Settings::from_env`]).
    pub fn init(default_service_name: &str) -> Result<Self, TelemetryError> {
        Self::install(Settings::from_env(default_service_name)?)
    }

    /// Installs the global subscriber: logs to stderr filtered by `settings.log_filter`, and,
    /// unless tracing is disabled, an OpenTelemetry layer. Spans get trace ids even without an
    /// exporter, so logs, build records and manifest commits carry them; they are only sent
    /// when an endpoint is set.
    pub fn install(settings: Settings) -> Result<Self, TelemetryError> {
        let logs = tracing_subscriber::fmt::layer()
            .fmt_fields(logfmt::Readable)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(tracing_subscriber::EnvFilter::new(&settings.log_filter));
        // One client (and CA file) for both exporters over OTLP/HTTP.
        let client = match &settings.export {
            Some(e) if e.protocol == Protocol::HttpProtobuf && !settings.disabled => Some(otlp_http_client(e.certificate.as_deref())?),
            Some(e) if e.certificate.is_some() && !settings.disabled => return Err(TelemetryError::GrpcCertificate),
            _ => None,
        };
        let provider = (!settings.disabled).then(|| build_provider(&settings, client.clone())).transpose()?;
        match (&provider, &settings.export, settings.request_spans) {
            // Request spans on the lean OTLP/HTTP path (see `lean.rs`).
            (Some(_), Some(export), RequestSpans::Lean { always_on }) => {
                let client = client.expect("the lean path is OTLP/HTTP, which has a client");
                context::set_lean(lean::LeanExporter::start(export.endpoint.clone(), client, &resource(&settings), "conveyor"), always_on)
            }
            // For the spans made directly with the OpenTelemetry API (see `context::RequestSpan`).
            (Some(p), Some(_), _) => context::set_tracer(p.tracer("conveyor")),
            // Nothing is exported: request spans only need ids.
            (Some(_), None, _) => context::set_ids_only(),
            (None, _, _) => {}
        }
        let traces = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("conveyor"))
                // Per-span extras nobody reads here, and each costs attributes on every request.
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_location(false)
                .with_filter(span_filter())
        });
        tracing_subscriber::registry().with(logs).with(traces).try_init().map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
        match &settings.export {
            Some(e) if provider.is_some() => {
                tracing::info!(protocol = %e.protocol, endpoint = %e.endpoint, service = %settings.service_name, "exporting traces over OTLP")
            }
            _ if settings.disabled => tracing::info!("tracing disabled (OTEL_SDK_DISABLED)"),
            _ => tracing::info!(
                "no OTLP endpoint set (OTEL_EXPORTER_OTLP_ENDPOINT): trace ids are kept in logs and records, nothing is exported"
            ),
        }
        Ok(Self { provider })
    }

    /// Sends what is buffered and stops the exporter.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        context::shutdown_lean();
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("telemetry: flushing spans at shutdown failed: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which spans and events become OpenTelemetry data: the services' spans at INFO and above and
/// their WARN and ERROR events (retries, failures: what a trace reader needs; an INFO line per
/// webhook would cost every request an event), not the chatter of the HTTP and gRPC stacks
/// (which would also trace the exporter's own requests).
fn span_filter<S: tracing::Subscriber>() -> impl tracing_subscriber::layer::Filter<S> {
    use tracing_subscriber::filter::FilterExt;
    let notable = tracing_subscriber::filter::filter_fn(|meta| meta.is_span() || *meta.level() <= tracing::Level::WARN);
    Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("opentelemetry", tracing::level_filters::LevelFilter::OFF)
        .with_target("opentelemetry_sdk", tracing::level_filters::LevelFilter::OFF)
        .with_target("opentelemetry_otlp", tracing::level_filters::LevelFilter::OFF)
        .with_target("h2", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper", tracing::level_filters::LevelFilter::OFF)
        .with_target("hyper_util", tracing::level_filters::LevelFilter::OFF)
        .with_target("tonic", tracing::level_filters::LevelFilter::OFF)
        .with_target("tower", tracing::level_filters::LevelFilter::OFF)
        .with_target("reqwest", tracing::level_filters::LevelFilter::OFF)
        .and(notable)
}

/// The resource of every span: `service.name`, `OTEL_RESOURCE_ATTRIBUTES` and the SDK's own.
fn resource(settings: &Settings) -> Resource {
    Resource::builder().with_service_name(settings.service_name.clone()).build()
}

/// The blocking client OTLP/HTTP is sent with: rustls, the system's CAs and those of
/// `certificate`, 10 s per request. Made on its own thread: a blocking client may not be made
/// (nor dropped) on an async runtime's thread.
fn otlp_http_client(certificate: Option<&std::path::Path>) -> Result<reqwest::blocking::Client, TelemetryError> {
    let roots = match certificate {
        None => Vec::new(),
        Some(path) => {
            let failed = |message: String| TelemetryError::Certificate { path: path.to_path_buf(), message };
            let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| failed(e.to_string()))?;
            if certs.is_empty() {
                return Err(failed("no PEM certificate in it".into()));
            }
            certs
        }
    };
    let built = std::thread::spawn(move || {
        roots
            .into_iter()
            .fold(reqwest::blocking::Client::builder(), |b, c| b.add_root_certificate(c))
            .timeout(std::time::Duration::from_secs(10))
            .build()
    })
    .join()
    .expect("building the OTLP/HTTP client does not panic");
    built.map_err(|e| TelemetryError::Exporter { protocol: Protocol::HttpProtobuf, endpoint: String::new(), message: e.to_string() })
}

fn build_provider(settings: &Settings, client: Option<reqwest::blocking::Client>) -> Result<SdkTracerProvider, TelemetryError> {
    // The SDK reads OTEL_TRACES_SAMPLER(_ARG) itself.
    let mut builder = SdkTracerProvider::builder().with_resource(resource(settings));
    if let Some(export) = &settings.export {
        let failed = |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter {
            protocol: export.protocol,
            endpoint: export.endpoint.clone(),
            message: e.to_string(),
        };
        let exporter = match export.protocol {
            Protocol::HttpProtobuf => {
                let mut http = opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(&export.endpoint);
                if let Some(client) = client {
                    http = http.with_http_client(client);
                }
                http.build().map_err(failed)?
            }
            Protocol::Grpc => {
                opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&export.endpoint).build().map_err(failed)?
            }
        };
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}
