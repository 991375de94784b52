//! The HTTP contract of both services, typed: what each route takes and answers ([`cd`] for
//! cd-service, [`ci`] for ci-service) and the one error body ([`error`]). The services answer
//! with these types, and the `conveyor` CLI, the console and the tests read them back, so a
//! field renamed on one side fails to compile on the other. Without the `server` feature this
//! crate is plain serde types (a JSON client links no server and no git).

pub mod cd;
pub mod ci;
pub mod error;

pub use error::{ApiError, ErrorBody};
