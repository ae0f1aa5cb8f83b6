//! Built-in functions whose call makes a statement more than what it looks like.
//!
//! A `SELECT` can change server state through the functions it calls. Two tiers:
//!
//! * [`FunctionEffect::Opaque`]: the function runs SQL given as a string
//!   (`dblink_exec`, `query_to_xml`), reads tables named in a string
//!   (`table_to_xml`), decodes WAL (`pg_logical_slot_get_changes`), or reads or
//!   writes files on the database host (`lo_export`, `pg_read_file`). What it
//!   does cannot be expressed as a kind and tables, so the whole statement is
//!   opaque, whatever kind it would otherwise have.
//! * [`FunctionEffect::Call`]: a known side effect on server state
//!   (`pg_terminate_backend`, `set_config`, `nextval`, `lo_unlink`). A statement
//!   that would otherwise be a read (`SELECT`, `COPY ... TO`) is judged a
//!   [`Call`](airlock_core::SqlKind::Call); in a write it changes nothing, as
//!   the write already needs write permission.
//!
//! User-defined functions can have any side effect and are not recognised;
//! policies that must stop them should allow reads only from roles that cannot
//! execute such functions.

/// What calling a function means for the statement that calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FunctionEffect {
    /// No known side effect.
    None,
    /// A known side effect on server state.
    Call,
    /// Arbitrary SQL, files on the server, or another server.
    Opaque,
}

/// Functions that make a statement opaque (lower case, unqualified).
const OPAQUE: &[&str] = &[
    // Run SQL given as text, possibly on another server (or this one, as another user).
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    // Full-text search helpers whose argument is a query to run.
    "ts_stat",
    "ts_rewrite",
    // Read tables named in a string, out of sight of table rules.
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    // Decode the WAL: every change to every table.
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_binary_changes",
    // Files on the database host.
    "lo_import",
    "lo_export",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_ls_dir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
];

/// Functions with a known side effect on server state (lower case, unqualified).
const CALL: &[&str] = &[
    // Other sessions and the server process.
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_log_backend_memory_contexts",
    // WAL, backups and replication.
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_replication_origin_advance",
    "pg_replication_origin_session_setup",
    "pg_replication_origin_session_reset",
    "pg_replication_origin_xact_setup",
    "pg_replication_origin_xact_reset",
    "pg_logical_emit_message",
    // Settings and statistics.
    "set_config",
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters",
    "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot",
    "pg_stat_reset_subscription_stats",
    "pg_stat_statements_reset",
    "pg_import_system_collations",
    // Sequences.
    "nextval",
    "setval",
    // Large objects stored in the database.
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lo_truncate",
    "lo_truncate64",
    "lowrite",
    // Notifications.
    "pg_notify",
];

/// What calling the function named `name` (lower case, unqualified) means.
pub(super) fn function_effect(name: &str) -> FunctionEffect {
    // Every dblink function talks to a server given by a connection string.
    if name.starts_with("dblink") || OPAQUE.contains(&name) {
        FunctionEffect::Opaque
    } else if CALL.contains(&name) {
        FunctionEffect::Call
    } else {
        FunctionEffect::None
    }
}
