//! OIDC issuer double (being built).
