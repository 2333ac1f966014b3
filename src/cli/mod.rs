//! Command-line tools beyond `serve`: `verify`, `watch` and `policy check`.
//!
//! Imports: `oci`, `config`, `policy`, `proxy`, `server::route` (reference
//! parsing shares the proxy's routing), `watch`.

pub mod verify;
pub mod watch;
