//! # airlock-testkit
//!
//! Real servers and protocol-faithful doubles for Airlock's tests: a throwaway
//! PostgreSQL started from the machine's binaries ([`postgres`]) and an OIDC
//! issuer double serving discovery and JWKS over HTTP ([`oidc`]). Test support;
//! the gateway links it only for `airlock demo` (its `demo` feature).

pub mod oidc;
pub mod postgres;
