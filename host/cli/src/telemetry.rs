//! What the server tells its operator: logs on stderr (filtered by `ASH_LOG`), and traces
//! over OTLP/HTTP (protobuf) when the standard OpenTelemetry variables name a collector
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); without them,
//! nothing is exported. The exporter's other `OTEL_*` settings (headers, timeout, batch
//! delay, service name and resource attributes) apply as the OpenTelemetry SDK reads them.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::TracerProvider;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The largest reply of a collector read.
const MAX_REPLY: usize = 64 * 1024;

/// The trace exporter, when one is configured; flushed at [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs logging, and trace export when configured; `role` (`server` or `runner`) is the
/// `ash.role` attribute of every span this process exports.
pub fn init(role: &'static str) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ASH_LOG")
        .unwrap_or_else(|_| "info,tower_http=warn,sqlx=warn".into());
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    let provider = configured.then(|| provider(role)).transpose()?;
    let traces = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("ash")));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(traces)
        .init();
    Ok(Telemetry { provider })
}

fn provider(role: &'static str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithHttpConfig;
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        runtime: tokio::runtime::Handle::current(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new("ash.role", role));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("ash");
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

impl Telemetry {
    /// Sends the spans not sent yet.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // It waits for its export thread, whose requests run on this runtime.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            eprintln!("ash: the last traces could not be exported: {e}");
        }
    }
}

/// The exporter's HTTP client: the server's own reqwest, run on its tokio runtime (the
/// exporter sends from a thread of its own).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (http, request) = (self.http.clone(), reqwest::Request::try_from(request)?);
        let sent = self.runtime.spawn(async move {
            let mut reply = http.execute(request).await?;
            let mut response = Response::builder().status(reply.status());
            for (name, value) in reply.headers() {
                response = response.header(name, value);
            }
            let mut body = Vec::new();
            while let Some(chunk) = reply.chunk().await? {
                if body.len() + chunk.len() > MAX_REPLY {
                    return Err(
                        format!("the collector replied with more than {MAX_REPLY} bytes").into(),
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, HttpError>(response.body(Bytes::from(body))?)
        });
        sent.await?
    }
}
