//! Command-line tools beyond `serve`: `verify`, `watch`, `promote`,
//! `policy check` and the `store` commands.
//!
//! Imports: `oci`, `config`, `policy`, `store`, `proxy`, `promote`,
//! `server::route` (reference parsing shares the proxy's routing), `watch`.

pub mod promote;
pub mod store;
pub mod verify;
pub mod watch;
