//! W3C trace context across the cluster: each request's span continues the trace its caller
//! sent (`traceparent`), and a coordinator sends its own on to the runner it forwards to. The
//! spans go out over OTLP only when the binary installs an exporter (off by default); without
//! one, the propagator is a no-op and nothing here costs more than the span.

use axum::http::{HeaderMap, Request};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span of one request, a child of the caller's trace when it sent one.
pub(crate) fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}

/// Adds the current span's trace context to a request this server sends on.
pub(crate) fn inject(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut HeaderInjector(headers))
    });
}
