//! Command-line tools beyond `serve`: `verify` and `policy check`.
//!
//! Imports: `oci`, `config`, `policy`, `proxy`, `server::route` (reference
//! parsing shares the proxy's routing).

pub mod verify;
