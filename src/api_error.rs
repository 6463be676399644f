//! The public path of the error type and the upstream-error normaliser, kept for the
//! integration tests, benchmarks and fuzz targets that name it: the type lives in `error`,
//! the normaliser in `error_body`.

pub use crate::error::{error_type_for, ApiError};
pub use crate::error_body::normalise;
