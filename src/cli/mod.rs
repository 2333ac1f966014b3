//! Command-line tools beyond `serve`: `verify`, `watch`, `policy check` and
//! the `store` commands.
//!
//! Imports: `oci`, `config`, `policy`, `store`, `proxy`, `server::route`
//! (reference parsing shares the proxy's routing), `watch`.

pub mod store;
pub mod verify;
pub mod watch;
