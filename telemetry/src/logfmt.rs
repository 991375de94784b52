//! How fields look in log lines: the span fields that exist for the trace exporter
//! (`otel.*` and the semantic-convention attributes such as `messaging.*`, `vcs.*`, `http.*`)
//! are left out of the text logs, so a line keeps what a person reads: the message, the
//! build or event it is about, and its `trace_id`.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{format::Writer, FormatFields},
};

/// Attribute prefixes that only the trace exporter needs.
const TRACE_ONLY: &[&str] = &["otel.", "messaging.", "http.", "vcs.", "container.", "oci.", "error.", "url."];

pub(crate) fn hidden(name: &str) -> bool {
    TRACE_ONLY.iter().any(|p| name.starts_with(p))
}

/// `message key=value key=value`, without the trace-only fields.
pub(crate) struct Readable;

impl<'w> FormatFields<'w> for Readable {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor { writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if hidden(name) {
            return;
        }
        if name == "message" {
            self.write(format_args!("{value:?}"));
        } else {
            self.write(format_args!("{name}={value:?}"));
        }
    }
}

impl Visitor<'_> {
    fn write(&mut self, args: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        if !self.first {
            self.result = self.writer.write_char(' ');
        }
        self.first = false;
        if self.result.is_ok() {
            self.result = self.writer.write_fmt(args);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_trace_attributes_are_hidden() {
        for name in ["otel.kind", "messaging.system", "vcs.ref.head.name", "http.route", "container.image.name", "oci.manifest.digest"] {
            assert!(super::hidden(name), "{name}");
        }
        for name in ["message", "trace_id", "conveyor.build.id", "error", "app"] {
            assert!(!super::hidden(name), "{name}");
        }
    }
}
