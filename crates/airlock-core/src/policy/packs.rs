//! The built-in rule packs. They are TOML in the same format as user rules,
//! so they read as examples and go through the same validation.

const PACKS: &[(&str, &str)] = &[
    ("sql-guardrails", include_str!("packs/sql-guardrails.toml")),
    ("ssh-guardrails", include_str!("packs/ssh-guardrails.toml")),
    (
        "kube-guardrails",
        include_str!("packs/kube-guardrails.toml"),
    ),
];

/// The built-in rule packs as `(name, TOML text)`, for listing and for
/// `[policy] packs = [...]`.
pub fn packs() -> &'static [(&'static str, &'static str)] {
    PACKS
}
